import ArgumentParser
import Durations
import NetworkAddress
import Reaper
import SockDiag

/// A value ArgumentParser reads from one command-line word, once, before any subcommand runs.
/// `init?(argument:)` can only say "invalid", so every option of such a type names `transform` as its
/// transform: ArgumentParser then prints the thrown error after its own "The value 'x' is invalid
/// for '--option <name>':", and exits 64 as for any bad argument. Each conformance writes
/// `init?(argument:)` out: a public type's must be public, which a default here could not be.
protocol ArgumentValue: ExpressibleByArgument, Sendable {
    associatedtype ParseError: Error & CustomStringConvertible
    init(argumentText: String) throws(ParseError)
}

extension ArgumentValue {
    @Sendable static func transform(_ text: String) throws -> Self { try Self(argumentText: text) }
}

extension Destination: ArgumentValue {
    init(argumentText: String) throws(DestinationParseError) { try self.init(parsing: argumentText) }
    public init?(argument: String) { try? self.init(argumentText: argument) }
}

extension SocketStates: ArgumentValue {
    init(argumentText: String) throws(SocketStatesParseError) { try self.init(parsing: argumentText) }
    public init?(argument: String) { try? self.init(argumentText: argument) }
}

/// A duration above zero, as `--stuck` takes it: zero would call every connection stuck.
struct PositiveDuration: ArgumentValue, CustomStringConvertible {
    struct ParseError: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    let duration: Duration

    init(argumentText: String) throws(ParseError) {
        let notAboveZero = ParseError(description: "'\(argumentText)' is not a duration above zero")
        let duration: Duration
        do { duration = try DurationParsing.parseChecked(argumentText) } catch {
            // parseChecked's advice for a negative one (write 0) does not hold here.
            throw argumentText.trimmingPrefix(while: \.isWhitespace).hasPrefix("-") ? notAboveZero : ParseError(description: error.message)
        }
        guard duration > .zero else { throw notAboveZero }
        self.duration = duration
    }

    init?(argument: String) { try? self.init(argumentText: argument) }

    var description: String { DurationParsing.format(duration) }
}

/// A `--zone` word: one conntrack zone, or `all`. Whether `all` stands alone is the options' check.
enum ZoneArgument: ArgumentValue, Equatable {
    case zone(UInt16)
    case all

    struct ParseError: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    init(argumentText: String) throws(ParseError) {
        if argumentText == "all" {
            self = .all
        } else if let zone = UInt16(argumentText) {
            self = .zone(zone)
        } else {
            throw ParseError(description: "'\(argumentText)' is not a conntrack zone: give a number from 0 to 65535, or 'all'")
        }
    }

    init?(argument: String) { try? self.init(argumentText: argument) }
}

extension NamespacedPurge.Selection: ArgumentValue {
    struct ParseError: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    init(argumentText: String) throws(ParseError) {
        guard let selection = Self(naming: argumentText) else {
            throw ParseError(description: "'\(argumentText)' names no namespace: give a name under /run/netns, a path, or 'all'")
        }
        self = selection
    }

    public init?(argument: String) { try? self.init(argumentText: argument) }
}
