import NetworkAddress
import Testing

/// The one split of `host:port` that destinations and nginx upstream servers share.
@Suite struct HostPortTests {
    @Test(arguments: [
        ("10.0.0.3:6443", "10.0.0.3", "6443" as String?),
        ("10.0.0.3", "10.0.0.3", nil),
        ("10.0.0.0/24:80", "10.0.0.0/24", "80"),
        ("web.internal:8080", "web.internal", "8080"),
        ("[fd00::3]:6443", "fd00::3", "6443"),
        ("[fd00::/64]", "fd00::/64", nil),
        (":53", "", "53"),
        ("::1", "::1", nil),  // a bare IPv6 address carries no port: two colons are never host and port
        ("fd00::3", "fd00::3", nil),
        ("[fd00::3]:", "fd00::3", ""),  // the caller says an empty port is wrong, not the split
    ])
    func splits(text: String, host: String, port: String?) throws {
        let split = try HostPort(splitting: Substring(text))
        #expect(String(split.host) == host)
        #expect(split.port.map(String.init) == port)
    }

    @Test func refusesWhatIsNotHostAndPort() {
        #expect(throws: HostPort.SplitError.missingClosingBracket) { try HostPort(splitting: "[fd00::1") }
        #expect(throws: HostPort.SplitError.textAfterBracket) { try HostPort(splitting: "[fd00::1]6443") }
    }
}
