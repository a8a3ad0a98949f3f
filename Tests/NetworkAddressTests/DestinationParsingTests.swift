import NetworkAddress
import Testing

@Suite struct DestinationParsingTests {
    @Test(arguments: [
        ("10.0.0.3", "10.0.0.3"),
        ("10.0.0.3:6443", "10.0.0.3:6443"),
        ("10.0.0.0/24", "10.0.0.0/24"),
        ("10.0.0.0/24:443", "10.0.0.0/24:443"),
        ("[fd00::3]:6443", "[fd00::3]:6443"),
        ("fd00::3", "fd00::3"),
        ("[fd00::/64]:53", "[fd00::/64]:53"),
        ("fd00:0:0:0:0:0:0:3", "fd00::3"),
        (":6443", ":6443"),
        ("  10.1.2.3:80 ", "10.1.2.3:80"),
        // Found by the values fuzz target: an IPv6 address that starts with "::" read as ":PORT".
        ("::1", "::1"),
        ("0::/60", "::/60"),
        ("::/0", "::/0"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
    ])
    func parsesAndPrints(input: String, expected: String) throws {
        #expect(try Destination(parsing: input).description == expected)
    }

    @Test(arguments: [
        ("", "empty"),
        ("10.0.0.0.1", "is not an IPv4 or IPv6 address"),
        ("10.0.0.256", "is not an IPv4 or IPv6 address"),
        ("10.0.0.3:0", "port '0'"),
        ("10.0.0.3:70000", "port '70000'"),
        ("10.0.0.3:http", "port 'http'"),
        ("10.0.0.0/33", "prefix length '33'"),
        ("[fd00::1", "missing ']'"),
        ("[fd00::1]6443", "expected ':PORT'"),
        ("fd00::/129", "prefix length '129'"),
        ("apiserver:6443", "host names are not resolved"),
        (":", "port ''"),
    ])
    func rejectsWithAReasonNamingTheInput(input: String, reason: String) {
        #expect {
            try Destination(parsing: input)
        } throws: { error in
            let message = "\(error)"
            return message.contains("'\(input)'") && message.contains(reason)
        }
    }

    @Test func portOnlyMatchesAnyAddress() throws {
        let destination = try Destination(parsing: ":53")
        #expect(destination.matches(address: .v4(0x0A00_0001), port: 53))
        #expect(destination.matches(address: IPAddress("fd00::1")!, port: 53))
        #expect(!destination.matches(address: .v4(0x0A00_0001), port: 54))
    }

    @Test func ipv4DestinationMatchesDualStackPeers() throws {
        let destination = try Destination(parsing: "10.0.0.0/24:443")
        #expect(destination.matches(address: IPAddress("::ffff:10.0.0.9")!, port: 443))
        #expect(!destination.matches(address: IPAddress("::ffff:10.0.1.9")!, port: 443))
        #expect(!destination.matches(address: IPAddress("fd00::a00:9")!, port: 443))
        #expect(destination.familiesToDump == [.v4, .v6])
        #expect(try Destination(parsing: "[fd00::1]:443").familiesToDump == [.v6])
    }
}

@Suite struct DestinationWidthTests {
    /// The CLI asks for --force beyond these: a /8 of IPv4, a /32 of IPv6, and any address.
    @Test(arguments: [
        ("0.0.0.0/0", true), ("10.0.0.0/7", true), (":443", true), ("[::/0]:80", true), ("[fd00::/31]:80", true),
        ("10.0.0.0/8", false), ("10.0.0.1", false), ("10.0.0.0/24:443", false), ("[fd00::/32]:80", false), ("fd00::1", false),
    ])
    func wideDestinations(text: String, wide: Bool) throws {
        #expect(try Destination(parsing: text).isWide == wide)
    }
}

@Suite struct IPAddressTests {
    @Test(arguments: [
        ("::", "::"), ("::1", "::1"), ("fd00::", "fd00::"), ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
        ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"), ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
    ])
    func formatsIPv6AsRFC5952(input: String, expected: String) {
        #expect(IPAddress(input)?.description == expected)
    }

    @Test func roundTripsNetworkBytes() {
        let address = IPAddress("fd00:1::abcd")!
        #expect(IPAddress(networkBytes: address.networkBytes) == address)
        #expect(IPAddress("10.200.0.2")!.networkBytes == [10, 200, 0, 2])
        #expect(IPAddress(networkBytes: [1, 2, 3]) == nil)
    }

    @Test func prefixContainment() {
        let prefix = IPPrefix(address: IPAddress("fd00:1:2:3::")!, length: 72)!
        #expect(prefix.contains(IPAddress("fd00:1:2:3:ff::1")!))
        #expect(!prefix.contains(IPAddress("fd00:1:2:3:100::1")!))
        #expect(IPPrefix(address: .v4(0), length: 0)!.contains(.v4(0xFFFF_FFFF)))
        #expect(IPPrefix(address: .v4(0), length: 33) == nil)
    }
}
