import OS

/// The directive tree of an nginx configuration, with `include` globs followed. Only the grammar
/// nginx itself has (words, quotes, `;`, `{ }`, `#` comments); meaning is left to the caller.
public struct NginxDirective: Sendable, Equatable {
    public var name: String
    public var arguments: [String]
    public var children: [NginxDirective]?
    public var file: String
    public var line: Int
}

public enum NginxConfigParser {
    /// Parses `path` and every file it includes. `readFile` is injectable so tests need no files.
    public static func parse(
        path: String, readFile: (String) -> String? = FileStatus.readText
    ) throws(ConfigurationError) -> [NginxDirective] {
        var visited: [String] = []
        return try parseFile(path, baseDirectory: directory(of: path), readFile: readFile, visited: &visited)
    }

    /// Every file the configuration was read from: the agent watches them for changes.
    public static func files(path: String) -> [String] {
        var visited: [String] = []
        _ = try? parseFile(path, baseDirectory: directory(of: path), readFile: FileStatus.readText, visited: &visited)
        return visited
    }

    static func parseFile(
        _ path: String, baseDirectory: String, readFile: (String) -> String?, visited: inout [String]
    ) throws(ConfigurationError) -> [NginxDirective] {
        guard visited.count < 256 else { throw ConfigurationError(key: "include", "more than 256 files: an include loop?", file: path) }
        guard let text = readFile(path) else {
            throw ConfigurationError(key: "", "the nginx configuration \(ConfigOrigin.whyUnreadable(path))", file: path)
        }
        visited.append(path)
        var tokens = try tokenize(text, file: path)[...]
        let tree = try block(&tokens, file: path, closing: false)
        return try expandIncludes(tree, baseDirectory: baseDirectory, readFile: readFile, visited: &visited)
    }

    static func expandIncludes(
        _ directives: [NginxDirective], baseDirectory: String, readFile: (String) -> String?, visited: inout [String]
    ) throws(ConfigurationError) -> [NginxDirective] {
        var result: [NginxDirective] = []
        for var directive in directives {
            if directive.name == "include", directive.children == nil, let pattern = directive.arguments.first {
                // nginx resolves relative includes against its configuration prefix: the main file's directory.
                let absolute = pattern.hasPrefix("/") ? pattern : "\(baseDirectory)/\(pattern)"
                let matches = FileStatus.glob(absolute)
                if matches.isEmpty && !pattern.contains("*") && !pattern.contains("?") {
                    throw ConfigurationError(key: "include", "'\(pattern)' matches no file", file: directive.file, line: directive.line)
                }
                for match in matches {
                    result += try parseFile(match, baseDirectory: baseDirectory, readFile: readFile, visited: &visited)
                }
                continue
            }
            if let children = directive.children {
                directive.children = try expandIncludes(children, baseDirectory: baseDirectory, readFile: readFile, visited: &visited)
            }
            result.append(directive)
        }
        return result
    }

    enum Token: Equatable {
        case word(String, line: Int)
        case semicolon(line: Int)
        case open(line: Int)
        case close(line: Int)

        var line: Int {
            switch self {
            case .word(_, let line), .semicolon(let line), .open(let line), .close(let line): line
            }
        }
    }

    static func tokenize(_ text: String, file: String) throws(ConfigurationError) -> [Token] {
        var tokens: [Token] = []
        var line = 1
        var current = ""
        var hasWord = false
        var iterator = Array(text.unicodeScalars)[...]
        func flush() {
            if hasWord { tokens.append(.word(current, line: line)) }
            current = ""
            hasWord = false
        }
        while let scalar = iterator.popFirst() {
            switch scalar {
            case "\n":
                flush()
                line += 1
            case " ", "\t", "\r":
                flush()
            case "#" where !hasWord:
                while let next = iterator.first, next != "\n" { iterator.removeFirst() }
            case ";":
                flush()
                tokens.append(.semicolon(line: line))
            case "{":
                flush()
                tokens.append(.open(line: line))
            case "}":
                flush()
                tokens.append(.close(line: line))
            case "\"", "'":
                hasWord = true
                var closed = false
                while let next = iterator.popFirst() {
                    if next == scalar { closed = true; break }
                    if next == "\\", let escaped = iterator.popFirst() { current.unicodeScalars.append(escaped); continue }
                    if next == "\n" { line += 1 }
                    current.unicodeScalars.append(next)
                }
                guard closed else { throw ConfigurationError(key: "", "unterminated quote", file: file, line: line) }
            case "\\":
                hasWord = true
                if let escaped = iterator.popFirst() { current.unicodeScalars.append(escaped) }
            default:
                hasWord = true
                current.unicodeScalars.append(scalar)
            }
        }
        flush()
        return tokens
    }

    static func block(_ tokens: inout ArraySlice<Token>, file: String, closing: Bool) throws(ConfigurationError) -> [NginxDirective] {
        var directives: [NginxDirective] = []
        var words: [String] = []
        var startLine = 0
        while let token = tokens.popFirst() {
            switch token {
            case .word(let word, let line):
                if words.isEmpty { startLine = line }
                words.append(word)
            case .semicolon(let line):
                guard let name = words.first else { throw ConfigurationError(key: "", "unexpected ';'", file: file, line: line) }
                directives.append(
                    NginxDirective(name: name, arguments: Array(words.dropFirst()), children: nil, file: file, line: startLine))
                words = []
            case .open(let line):
                guard let name = words.first else { throw ConfigurationError(key: "", "unexpected '{'", file: file, line: line) }
                let children = try block(&tokens, file: file, closing: true)
                directives.append(
                    NginxDirective(name: name, arguments: Array(words.dropFirst()), children: children, file: file, line: startLine))
                words = []
            case .close(let line):
                guard words.isEmpty else {
                    throw ConfigurationError(key: "", "missing ';' after '\(words.joined(separator: " "))'", file: file, line: startLine)
                }
                guard closing else { throw ConfigurationError(key: "", "unexpected '}'", file: file, line: line) }
                return directives
            }
        }
        guard !closing else { throw ConfigurationError(key: "", "missing '}' at end of file", file: file) }
        guard words.isEmpty else {
            throw ConfigurationError(key: "", "missing ';' after '\(words.joined(separator: " "))'", file: file, line: startLine)
        }
        return directives
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
