import Foundation
import Logging

/// One line per event on stderr: logfmt (`time=... level=info msg="..." pool=apiserver`) or JSON.
public struct StructuredLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let format: AgentConfiguration.LogFormat
    let sink: @Sendable (String) -> Void

    public init(
        label: String, format: AgentConfiguration.LogFormat, sink: @escaping @Sendable (String) -> Void = StructuredLogHandler.standardError
    ) {
        self.label = label
        self.format = format
        self.sink = sink
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

    static func logfmtValue(_ text: String) -> String {
        let needsQuotes = text.isEmpty || text.contains { $0 == " " || $0 == "=" || $0 == "\"" || $0 == "\\" || $0.isNewline }
        guard needsQuotes else { return text }
        let escaped = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
        return "\"\(escaped)\""
    }

    static func jsonValue(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let string):
            if let number = Int(string) { return number }
            if let number = Double(string), string.contains(".") { return number }
            return string
        case .stringConvertible(let convertible): return convertible.description
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
