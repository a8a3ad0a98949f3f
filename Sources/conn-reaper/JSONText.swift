import NetworkAddress

/// A JSON value and its text, written directly: Foundation's JSONEncoder took a second for the
/// 40,000 records of a 20,000-socket purge report. Keys print sorted, absent values as null.
enum JSONValue {
    case string(String)
    case integer(Int64)
    case unsigned(UInt64)
    case number(Double)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([(String, JSONValue)])

    static func optional(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }
    static func optional<T: BinaryInteger>(_ value: T?) -> JSONValue { value.map { .unsigned(UInt64($0)) } ?? .null }

    /// Pretty text, two spaces per level, like JSONEncoder's `.prettyPrinted, .sortedKeys`.
    /// Built as UTF-8 bytes: appending to a String scalar by scalar was as slow as JSONEncoder.
    var text: String {
        var output: [UInt8] = []
        output.reserveCapacity(4096)
        write(into: &output, indent: 0)
        return String(decoding: output, as: UTF8.self)
    }

    private func write(into output: inout [UInt8], indent: Int) {
        switch self {
        case .string(let value): Self.writeString(value, into: &output)
        case .integer(let value):
            if value < 0 { output.append(UInt8(ascii: "-")) }
            output.appendDecimal(value.magnitude)
        case .unsigned(let value): output.appendDecimal(value)
        case .number(let value): output.append(contentsOf: (value.isFinite ? "\(value)" : "null").utf8)
        case .bool(let value): output.append(contentsOf: (value ? "true" : "false").utf8)
        case .null: output.append(contentsOf: "null".utf8)
        case .array(let values):
            guard !values.isEmpty else { output.append(contentsOf: "[]".utf8); return }
            output.append(contentsOf: "[\n".utf8)
            for (index, value) in values.enumerated() {
                output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: indent + 2))
                value.write(into: &output, indent: indent + 2)
                output.append(contentsOf: (index == values.count - 1 ? "\n" : ",\n").utf8)
            }
            output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: indent))
            output.append(UInt8(ascii: "]"))
        case .object(let members):
            guard !members.isEmpty else { output.append(contentsOf: "{}".utf8); return }
            output.append(contentsOf: "{\n".utf8)
            // Byte order: the keys are ASCII, and Unicode-aware String comparison cost more than the writing.
            // Objects built in key order (a report's thousands of rows) skip the sort: a third of the cost.
            let precedes = { (a: (String, JSONValue), b: (String, JSONValue)) in a.0.utf8.lexicographicallyPrecedes(b.0.utf8) }
            let sorted = zip(members, members.dropFirst()).allSatisfy(precedes) ? members : members.sorted(by: precedes)
            for (index, (key, value)) in sorted.enumerated() {
                output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: indent + 2))
                Self.writeString(key, into: &output)
                output.append(contentsOf: ": ".utf8)
                value.write(into: &output, indent: indent + 2)
                output.append(contentsOf: (index == sorted.count - 1 ? "\n" : ",\n").utf8)
            }
            output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: indent))
            output.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ value: String, into output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): output.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): output.append(contentsOf: "\\\\".utf8)
            case UInt8(ascii: "\n"): output.append(contentsOf: "\\n".utf8)
            case UInt8(ascii: "\r"): output.append(contentsOf: "\\r".utf8)
            case UInt8(ascii: "\t"): output.append(contentsOf: "\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                output.append(contentsOf: "\\u00".utf8)
                output.append(hex[Int(byte >> 4)])
                output.append(hex[Int(byte & 0xF)])
            default: output.append(byte)
            }
        }
        output.append(UInt8(ascii: "\""))
    }
}
