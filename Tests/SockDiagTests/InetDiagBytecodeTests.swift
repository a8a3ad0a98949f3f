import NetworkAddress
import Testing

@testable import SockDiag

@Suite struct InetDiagBytecodeTests {
    func destination(_ text: String) -> Destination { try! Destination(parsing: text) }

    /// What `ss -tn dst 10.200.0.2:6443` sends (kernel-notes.md).
    @Test func oneDestinationMatchesWhatSsSends() {
        let program = InetDiagBytecode.program(matchingAny: [destination("10.200.0.2:6443")])
        #expect(program == [0x08, 0x10, 0x14, 0x00, 0x02, 0x20, 0x00, 0x00, 0x2b, 0x19, 0x00, 0x00, 0x0a, 0xc8, 0x00, 0x02])
    }

    @Test func orOfTwoJumpsToTheEndOnAMatch() {
        let program = InetDiagBytecode.program(matchingAny: [destination("10.0.0.1:80"), destination("10.0.0.2")])
        // cond1 (16) | JMP (4) | cond2 (16): 36 bytes
        #expect(program.count == 36)
        #expect(Array(program[0..<4]) == [8, 16, 20, 0])  // yes -> JMP, no -> cond2
        #expect(Array(program[16..<20]) == [1, 4, 20, 0])  // JMP over cond2, landing exactly on the end
        #expect(Array(program[20..<24]) == [8, 16, 20, 0])  // last: no lands 4 past the end
        #expect(Array(program[24..<32]) == [2, 32, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])  // any port: -1
    }

    @Test func cidrCarriesItsPrefixLength() {
        let program = InetDiagBytecode.program(matchingAny: [destination("10.1.2.0/24:443")])
        #expect(Array(program[4..<12]) == [2, 24, 0, 0, 0xBB, 0x01, 0, 0])
        #expect(Array(program[12..<16]) == [10, 1, 2, 0])
    }

    @Test func ipv6UsesSixteenAddressBytes() {
        let program = InetDiagBytecode.program(matchingAny: [destination("[fd00::3]:6443")])
        #expect(program.count == 28)
        #expect(Array(program[0..<8]) == [8, 28, 32, 0, 10, 128, 0, 0])
        #expect(Array(program[12..<28]) == [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [3])
    }

    @Test func portOnlyIsAnUnspecifiedFamilyWithoutAddress() {
        let program = InetDiagBytecode.program(matchingAny: [destination(":53")])
        #expect(program == [8, 12, 16, 0, 0, 0, 0, 0, 53, 0, 0, 0])
    }

    /// Replays the kernel's audit (inet_diag_bc_audit) and run (inet_diag_bc_run) on the program.
    @Test func kernelWalkAcceptsOnlyMatches() {
        let destinations = [destination("10.0.0.1:80"), destination("10.0.0.0/8:443"), destination(":53")]
        let program = InetDiagBytecode.program(matchingAny: destinations)
        #expect(KernelBytecodeModel.audit(program))
        let cases: [(IPAddress, UInt16, Bool)] = [
            (.v4(0x0A00_0001), 80, true), (.v4(0x0A00_0002), 80, false), (.v4(0x0A09_0909), 443, true),
            (.v4(0x0B00_0001), 443, false), (IPAddress("fd00::1")!, 53, true), (IPAddress("::ffff:10.0.0.1")!, 80, true),
        ]
        for (address, port, expected) in cases {
            #expect(KernelBytecodeModel.run(program, address: address, port: port) == expected, "\(address):\(port)")
        }
    }

    @Test func dumpRequestsCoverBothFamiliesForIPv4AndUseThePortShortcut() {
        let query = SocketQuery(destinations: [destination("10.0.0.1:6443"), destination("10.0.0.2:6443")], transports: [.tcp, .udp])
        let requests = query.requests(oneWalk: false)
        #expect(requests.count == 4)
        #expect(Set(requests.map(\.family)) == [.inet, .inet6])
        #expect(requests.allSatisfy { $0.destinationPort == 6443 } == true)
        let v6Only = SocketQuery(destinations: [destination("[fd00::1]:1"), destination("[fd00::2]:2")]).requests(oneWalk: false)
        #expect(v6Only.map(\.family) == [.inet6])
        #expect(v6Only[0].destinationPort == 0)
        #expect(SocketQuery(destinations: []).requests(oneWalk: true).isEmpty)
    }

    /// TCP's two families in one walk (TCPDIAG_GETSOCK); UDP has no such request: a dump per family.
    @Test func oneWalkCoversTCPsTwoFamiliesWithOneProgram() {
        let destinations = [destination("10.0.0.1:6443"), destination("[fd00::1]:6443")]
        let requests = SocketQuery(destinations: destinations, transports: [.tcp, .udp]).requests(oneWalk: true)
        #expect(requests.map(\.family) == [nil, .inet, .inet6])
        #expect(requests[0].transport == .tcp && requests[0].messageType == 18)
        #expect(requests[0].bytecode == InetDiagBytecode.program(matchingAny: destinations))
        #expect(requests[1...].allSatisfy { $0.transport == .udp && $0.messageType == 20 })
        #expect(requests[1].bytecode == InetDiagBytecode.program(matchingAny: [destinations[0]]))
    }

    @Test func listenAndTimeWaitAreNeverAskedFor() {
        let states = SocketStates([.established, .listen, .timeWait, .synSent])
        #expect(states.mask == 0b110)
        #expect(!states.contains(.listen))
    }
}

/// A transcription of the kernel's bytecode audit and interpreter for D_COND and JMP, so the
/// compiled programs are checked against the rules the kernel applies, not against our own reading.
enum KernelBytecodeModel {
    static func audit(_ program: [UInt8]) -> Bool {
        var offset = 0
        while offset < program.count {
            let length = program.count - offset
            let code = program[offset], yes = Int(program[offset + 1])
            let no = Int(program[offset + 2]) | Int(program[offset + 3]) << 8
            var minimum = 4
            if code == 8 {
                let family = program[offset + 4]
                minimum = 12 + (family == 2 ? 4 : family == 10 ? 16 : 0)
            } else if code != 1 {
                return false
            }
            if no < minimum || no > length + 4 || no & 3 != 0 { return false }
            if yes < minimum || yes > length + 4 || yes & 3 != 0 { return false }
            offset += yes
        }
        return offset == program.count
    }

    static func run(_ program: [UInt8], address: IPAddress, port: UInt16) -> Bool {
        var offset = 0
        while offset < program.count {
            let code = program[offset], yes = Int(program[offset + 1])
            let no = Int(program[offset + 2]) | Int(program[offset + 3]) << 8
            var matched = false
            if code == 8 {
                let family = program[offset + 4], prefixLength = Int(program[offset + 5])
                let condPort = Int32(
                    bitPattern: UInt32(program[offset + 8]) | UInt32(program[offset + 9]) << 8
                        | UInt32(program[offset + 10]) << 16 | UInt32(program[offset + 11]) << 24)
                matched = condPort == -1 || condPort == Int32(port)
                if matched && family != 0 {
                    let bytes = Array(program[(offset + 12)..<(offset + 12 + (family == 2 ? 4 : 16))])
                    let prefix = IPPrefix(address: IPAddress(networkBytes: bytes)!, length: prefixLength)!
                    matched = prefix.contains(address)
                }
            }
            offset += matched ? yes : no
        }
        return offset == program.count
    }
}
