/// A configuration problem, naming the key (as a path like `pools[0].probe.interval`) and, for
/// YAML, the file and line.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    public var key: String
    public var message: String
    public var file: String?
    public var line: Int?

    public init(key: String, _ message: String, file: String? = nil, line: Int? = nil) {
        self.key = key
        self.message = message
        self.file = file
        self.line = line
    }

    public var description: String {
        var location = ""
        if let file { location = line.map { "\(file):\($0): " } ?? "\(file): " }
        return key.isEmpty ? "\(location)\(message)" : "\(location)\(key): \(message)"
    }
}
