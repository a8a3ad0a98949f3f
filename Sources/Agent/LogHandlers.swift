import Foundation
import Logging
import Synchronization

/// The level every logger of the agent logs at, shared so that a reload changes it at once.
public final class LogLevelControl: Sendable {
    private let level: Mutex<Logger.Level>

    public init(_ level: Logger.Level = .info) {
        self.level = Mutex(level)
    }

    public var current: Logger.Level {
        get { level.withLock { $0 } }
        set { level.withLock { $0 = newValue } }
    }
}

/// One line per event on stderr: logfmt (`time=... level=info msg="..." pool=apiserver`) or JSON.
public struct StructuredLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    let label: String
    let format: AgentConfiguration.LogFormat
    let level: LogLevelControl
    let sink: @Sendable (String) -> Void

    public init(
        label: String, format: AgentConfiguration.LogFormat, level: LogLevelControl = LogLevelControl(),
        sink: @escaping @Sendable (String) -> Void = StructuredLogHandler.standardError
    ) {
        self.label = label
        self.format = format
        self.level = level
        self.sink = sink
    }

    public var logLevel: Logger.Level {
        get { level.current }
        set { level.current = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let level = event.level, message = event.message
        var fields = metadata.merging(event.metadata ?? [:]) { $1 }
        if let error = event.error { fields["error"] = "\(error)" }
        let time = Self.timestamp()
        switch format {
        case .logfmt:
            var line = "time=\(time) level=\(level) msg=\(Self.logfmtValue(message.description))"
            for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
                line += " \(key)=\(Self.logfmtValue(value.description))"
            }
            sink(line)
        case .json:
            var object: [String: Any] = ["time": time, "level": "\(level)", "msg": message.description]
            for (key, value) in fields { object[key] = Self.jsonValue(value) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            sink(String(decoding: data, as: UTF8.self))
        }
    }

    /// A value quoted when it has to be, with every control character escaped: a tab or a carriage
    /// return inside a value must not split or overwrite the line a log shipper reads.
    static func logfmtValue(_ text: String) -> String {
        let needsQuotes = text.isEmpty || text.unicodeScalars.contains { " =\"\\".unicodeScalars.contains($0) || isControl($0) }
        guard needsQuotes else { return text }
        var escaped = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            case _ where isControl(scalar): escaped += String(format: "\\u%04x", scalar.value)
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return "\"\(escaped)\""
    }

    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || scalar.value == 0x7F
    }

    /// A string stays a string (a pool named "007" is not the number 7); numbers are numbers only
    /// where the caller logged a number.
    static func jsonValue(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let string): return string
        case .stringConvertible(let convertible):
            switch convertible {
            case let number as Int: return number
            case let number as Double: return number
            case let flag as Bool: return flag
            default: return convertible.description
            }
        case .array(let array): return array.map(jsonValue)
        case .dictionary(let dictionary): return dictionary.mapValues(jsonValue)
        }
    }

    static func timestamp() -> String {
        Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    public static let standardError: @Sendable (String) -> Void = { line in
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
