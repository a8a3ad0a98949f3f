/// An IPv4 or IPv6 address held as integers, so prefix tests on tens of thousands of sockets allocate nothing.
public enum IPAddress: Hashable, Sendable {
    case v4(UInt32)
    case v6(high: UInt64, low: UInt64)

    public enum Family: Sendable, Hashable {
        case v4, v6
        public var bitWidth: Int { self == .v4 ? 32 : 128 }
        public var byteCount: Int { self == .v4 ? 4 : 16 }
    }

    public var family: Family {
        if case .v4 = self { return .v4 }
        return .v6
    }

    /// Parses dotted-quad IPv4 or any RFC 4291 IPv6 text (no brackets, no zone).
    public init?(_ text: some StringProtocol) {
        if let v4 = Self.parseIPv4(text) {
            self = .v4(v4)
        } else if text.contains(":"), let v6 = Self.parseIPv6(String(text)) {
            self = v6
        } else {
            return nil
        }
    }

    /// Network-order bytes, 4 or 16 of them.
    public init?(networkBytes bytes: some Collection<UInt8>) {
        switch bytes.count {
        case 4:
            self = .v4(bytes.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            let high = bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let low = bytes.dropFirst(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            self = .v6(high: high, low: low)
        default:
            return nil
        }
    }

    public var networkBytes: [UInt8] {
        switch self {
        case .v4(let value):
            return (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
        case .v6(let high, let low):
            return (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
                + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
        }
    }

    /// The IPv4 address inside `::ffff:a.b.c.d`: how a dual-stack AF_INET6 socket names an IPv4 peer.
    public var unmappedIPv4: IPAddress? {
        guard case .v6(let high, let low) = self, high == 0, low >> 32 == 0xFFFF else { return nil }
        return .v4(UInt32(truncatingIfNeeded: low))
    }

    public static func v4Mapped(_ v4: UInt32) -> IPAddress {
        .v6(high: 0, low: 0xFFFF_0000_0000 | UInt64(v4))
    }

    private static func parseIPv4(_ text: some StringProtocol) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), let octet = UInt8(part) else {
                return nil
            }
            value = value << 8 | UInt32(octet)
        }
        return value
    }

    /// RFC 4291 text: eight hex groups, one `::` standing for one or more zero groups, and an
    /// optional dotted IPv4 tail (`::ffff:10.0.0.1`). Parsed here rather than by inet_pton so this
    /// layer needs no C library; a test checks it against inet_pton.
    private static func parseIPv6(_ text: String) -> IPAddress? {
        guard text.utf8.count <= 45, text.allSatisfy(\.isASCII) else { return nil }
        let halves = text.split(separator: "::", omittingEmptySubsequences: false)
        var groups: [UInt16]
        switch halves.count {
        case 1:
            guard let all = Self.groups(halves[0], ipv4Tail: true), all.count == 8 else { return nil }
            groups = all
        case 2:
            guard let head = Self.groups(halves[0], ipv4Tail: false), let tail = Self.groups(halves[1], ipv4Tail: true),
                head.count + tail.count <= 7
            else { return nil }
            groups = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        default:
            return nil
        }
        let high = groups[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = groups[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return .v6(high: high, low: low)
    }

    /// The colon-separated groups of one side of `::`; an IPv4 tail counts as two groups.
    private static func groups(_ text: Substring, ipv4Tail: Bool) -> [UInt16]? {
        guard !text.isEmpty else { return [] }
        let fields = text.split(separator: ":", omittingEmptySubsequences: false)
        var groups: [UInt16] = []
        for (index, field) in fields.enumerated() {
            if ipv4Tail, index == fields.count - 1, field.contains(".") {
                guard let v4 = parseIPv4(field) else { return nil }
                groups += [UInt16(truncatingIfNeeded: v4 >> 16), UInt16(truncatingIfNeeded: v4)]
                continue
            }
            guard (1...4).contains(field.count), field.allSatisfy(\.isHexDigit), let group = UInt16(field, radix: 16) else {
                return nil
            }
            groups.append(group)
        }
        return groups
    }
}

extension IPAddress: CustomStringConvertible {
    /// Dotted quad, or RFC 5952 text for IPv6 (longest zero run compressed, lower case).
    public var description: String {
        switch self {
        case .v4:
            var bytes: [UInt8] = []
            bytes.reserveCapacity(15)
            appendText(to: &bytes)
            return String(decoding: bytes, as: UTF8.self)
        case .v6(let high, let low):
            if let v4 = unmappedIPv4 { return "::ffff:\(v4)" }
            let groups =
                (0..<4).map { UInt16(truncatingIfNeeded: high >> (48 - 16 * $0)) }
                + (0..<4).map { UInt16(truncatingIfNeeded: low >> (48 - 16 * $0)) }
            return Self.formatGroups(groups)
        }
    }

    private static func formatGroups(_ groups: [UInt16]) -> String {
        var bestStart = -1, bestLength = 0, runStart = -1
        for index in 0...8 {
            if index < 8 && groups[index] == 0 {
                if runStart < 0 { runStart = index }
            } else if runStart >= 0 {
                if index - runStart > bestLength { bestStart = runStart; bestLength = index - runStart }
                runStart = -1
            }
        }
        let hex = groups.map { String($0, radix: 16) }
        guard bestLength >= 2 else { return hex.joined(separator: ":") }
        let head = hex[..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLength)...].joined(separator: ":")
        return head + "::" + tail
    }
}
