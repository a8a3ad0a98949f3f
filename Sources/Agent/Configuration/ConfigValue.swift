import Durations
import Health
import NetworkAddress
import OS

/// The values a configuration holds, parsed one way wherever they are written: YAML keys and
/// command-line flags both go through these, and only the place named in an error differs.
public enum ConfigValue {
    /// What is wrong with a value, without saying where it was written.
    public struct Failure: Error, Equatable {
        public var message: String

        public init(_ message: String) {
            self.message = message
        }
    }

    public static func duration(_ text: String) throws(Failure) -> Duration {
        do { return try DurationParsing.parseChecked(text) } catch { throw Failure(error.message) }
    }

    public static func endpoint(_ text: String) throws(Failure) -> Endpoint {
        do { return try EndpointParsing.parse(text) } catch { throw Failure(error.message) }
    }

    public static func int(_ text: String, in range: ClosedRange<Int>) throws(Failure) -> Int {
        guard let value = Int(text) else { throw outOf(range, text) }
        return try int(value, in: range)
    }

    /// A number a flag already parsed, held to the range its YAML key has.
    public static func int(_ value: Int, in range: ClosedRange<Int>) throws(Failure) -> Int {
        guard range.contains(value) else { throw outOf(range, "\(value)") }
        return value
    }

    private static func outOf(_ range: ClosedRange<Int>, _ text: String) -> Failure {
        Failure("'\(text)' is not a whole number from \(range.lowerBound) to \(range.upperBound)")
    }

    /// A percentage: `20%` or `20` (a fraction like `12.5%` too), within `range`.
    public static func percent(_ text: String, in range: ClosedRange<Double>) throws(Failure) -> Double {
        let number = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let value = Double(number), value.isFinite, range.contains(value) else {
            throw Failure("'\(text)' is not a percentage from \(Int(range.lowerBound))% to \(Int(range.upperBound))%")
        }
        return value
    }

    /// A positive rate, like `0.5` (per second), at most `maximum`.
    public static func rate(_ text: String, maximum: Double) throws(Failure) -> Double {
        guard let value = Double(text), value.isFinite, value > 0, value <= maximum else {
            throw Failure("'\(text)' is not a number above 0 and at most \(Int(maximum)) (closes per second)")
        }
        return value
    }

    public static func choice<T: RawRepresentable & CaseIterable>(_ text: String, of _: T.Type = T.self) throws(Failure) -> T
    where T.RawValue == String {
        guard let value = T(rawValue: text) else {
            throw Failure("'\(text)' is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    /// `tcp`, `udp`, or both.
    public static func transports(_ names: [String]) throws(Failure) -> Set<TransportProtocol> {
        var transports = Set<TransportProtocol>()
        for name in names {
            switch name.trimmingPrefix(while: \.isWhitespace) {
            case "tcp": transports.insert(.tcp)
            case "udp": transports.insert(.udp)
            default: throw Failure("'\(name)' is not one of tcp, udp")
            }
        }
        return transports
    }

    /// `all`, or namespace files (`/run/netns/NAME`, `/proc/PID/ns/net`).
    public static func namespaces(_ values: [String]) throws(Failure) -> NamespaceSelection {
        if values.contains("all") { return .all }
        guard !values.isEmpty else { throw Failure("name at least one namespace, or write all") }
        var paths: [String] = []
        for value in values {
            guard let path = NetworkNamespace.path(naming: value) else {
                throw Failure("'\(value)' names no namespace: write a name under /run/netns, a path (/proc/PID/ns/net), or all")
            }
            paths.append(path)
        }
        return .paths(paths)
    }
}
