/// What a user names as a backend to reap: `IP`, `IP:PORT`, `CIDR`, `CIDR:PORT`, `[IPv6]:PORT`,
/// `[IPv6/len]:PORT`, or `:PORT` for any address on that port.
public struct Destination: Hashable, Sendable {
    /// nil means any address.
    public let prefix: IPPrefix?
    /// nil means any port.
    public let port: UInt16?

    public init(prefix: IPPrefix?, port: UInt16?) {
        self.prefix = prefix
        self.port = port
    }

    public init(address: IPAddress, port: UInt16?) {
        self.init(prefix: IPPrefix(host: address), port: port)
    }

    public func matches(address: IPAddress, port candidatePort: UInt16) -> Bool {
        if let port, port != candidatePort { return false }
        return prefix?.contains(address) ?? true
    }

    /// Wider than a /8 of IPv4 or a /32 of IPv6, or any address (`:PORT`): a purge toward it may end
    /// most of a host's connections, so the CLI asks for `--force`.
    public var isWide: Bool {
        guard let prefix else { return true }
        return prefix.length < (prefix.address.family == .v4 ? Self.widestIPv4 : Self.widestIPv6)
    }

    public static let widestIPv4 = 8
    public static let widestIPv6 = 32

    /// Families of socket dump that can hold a match: an IPv4 destination also matches dual-stack
    /// AF_INET6 sockets, which appear only in the IPv6 dump.
    public var familiesToDump: Set<IPAddress.Family> {
        switch prefix?.address.family {
        case .v4: return [.v4, .v6]
        case .v6: return [.v6]
        case nil: return [.v4, .v6]
        }
    }
}

public struct DestinationParseError: Error, Equatable, CustomStringConvertible {
    public let input: String
    public let reason: String
    public var description: String { "invalid destination '\(input)': \(reason)" }
}

extension Destination {
    public init(parsing rawText: String) throws(DestinationParseError) {
        let text = rawText.trimmingWhitespace
        func fail(_ reason: String) -> DestinationParseError {
            DestinationParseError(input: rawText, reason: reason)
        }
        guard !text.isEmpty else { throw fail("empty") }

        let split: HostPort
        do { split = try HostPort(splitting: text) } catch { throw fail(error.description) }
        var addressPart = split.host
        let portPart = split.port

        let port = try portPart.map { (part: Substring) throws(DestinationParseError) -> UInt16 in
            guard let value = UInt16(part), value > 0 else {
                throw fail("port '\(part)' is not a number from 1 to 65535")
            }
            return value
        }
        guard !addressPart.isEmpty else {
            guard port != nil else { throw fail("no address and no port") }
            self.init(prefix: nil, port: port)
            return
        }
        var lengthText: Substring?
        if let slash = addressPart.firstIndex(of: "/") {
            lengthText = addressPart[addressPart.index(after: slash)...]
            addressPart = addressPart[..<slash]
        }
        guard let address = IPAddress(addressPart) else {
            throw fail("'\(addressPart)' is not an IPv4 or IPv6 address (host names are not resolved here)")
        }
        if let lengthText {
            guard let length = Int(lengthText), let prefix = IPPrefix(address: address, length: length) else {
                throw fail("prefix length '\(lengthText)' must be 0 to \(address.family.bitWidth)")
            }
            self.init(prefix: prefix, port: port)
        } else {
            self.init(address: address, port: port)
        }
    }
}

extension Destination: CustomStringConvertible {
    public var description: String {
        guard let prefix else { return ":\(port ?? 0)" }
        guard let port else { return prefix.description }
        return prefix.address.family == .v6 ? "[\(prefix)]:\(port)" : "\(prefix):\(port)"
    }
}

extension String {
    var trimmingWhitespace: Substring {
        let trimmed = drop(while: \.isWhitespace)
        return trimmed[..<(trimmed.lastIndex(where: { !$0.isWhitespace }).map(trimmed.index(after:)) ?? trimmed.startIndex)]
    }
}
