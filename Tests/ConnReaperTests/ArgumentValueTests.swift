import ArgumentParser
import NetworkAddress
import SockDiag
import Testing

@testable import conn_reaper

/// Destinations, states and `--stuck` are parsed by ArgumentParser once, into their types; a bad
/// word is refused before any subcommand runs, with exit 64 and a message naming the word and what
/// is wrong with it.
@Suite struct ArgumentValueTests {
    /// The message and exit code ArgumentParser gives for `arguments`, which must not parse.
    static func refusal(_ arguments: [String]) -> (message: String, exitCode: Int32) {
        do {
            _ = try SelectionOptions.parse(arguments)
            Issue.record("\(arguments) parsed")
            return ("", 0)
        } catch {
            return (SelectionOptions.message(for: error), SelectionOptions.exitCode(for: error).rawValue)
        }
    }

    @Test func valuesArriveTyped() throws {
        let options = try SelectionOptions.parse(["--state", "established", "--stuck", "3s", "10.0.0.3:6443", "[fd00::3]:80"])
        #expect(options.destinations == [try Destination(parsing: "10.0.0.3:6443"), try Destination(parsing: "[fd00::3]:80")])
        #expect(options.states == SocketStates([.established]))
        #expect(options.stuck?.duration == .seconds(3))
        #expect(options.stuckRule?.afterMilliseconds == 3000)
    }

    @Test func defaultsAreTheReapedStatesAndNoStuckRule() throws {
        let options = try SelectionOptions.parse(["10.0.0.3"])
        #expect(options.states == .reapByDefault)
        #expect(options.stuck == nil && options.stuckRule == nil)
    }

    @Test(arguments: [
        ("10.0.0.1:65536", "invalid destination '10.0.0.1:65536': port '65536' is not a number from 1 to 65535"),
        ("backend.example:80", "invalid destination 'backend.example:80': 'backend.example' is not an IPv4 or IPv6 address"),
        ("[fd00::1", "invalid destination '[fd00::1': missing ']' after IPv6 address"),
    ])
    func aBadDestinationIsNamed(word: String, reason: String) {
        let refused = Self.refusal(["10.0.0.3:6443", word])
        #expect(refused.exitCode == 64)
        #expect(refused.message.contains(reason), "\(refused.message)")
    }

    @Test func anUnknownStateIsNamedWithTheKnownOnes() {
        let refused = Self.refusal(["--state", "established,bogus", "10.0.0.3"])
        #expect(refused.exitCode == 64)
        #expect(refused.message.contains("--state"), "\(refused.message)")
        #expect(refused.message.contains("unknown state 'bogus' (known: established, syn-sent,"), "\(refused.message)")
    }

    @Test func statesThatAreNeverReapedAloneAreRefused() {
        let refused = Self.refusal(["--state", "listen,time-wait", "10.0.0.3"])
        #expect(refused.exitCode == 64)
        #expect(
            refused.message.contains("'listen,time-wait' leaves no state to match: listen and time-wait are never reaped"),
            "\(refused.message)")
    }

    @Test(arguments: [
        ("0s", "'0s' is not a duration above zero"),
        ("-3s", "'-3s' is not a duration above zero"),
        ("soon", "'soon' is not a duration (write it like 500ms, 1s, 2m)"),
        ("33333333333333s", "'33333333333333s' is too long"),
    ])
    func aBadStuckDurationIsNamed(word: String, reason: String) {
        // `--stuck=` so that ArgumentParser takes "-3s" as the value, not as an option.
        let refused = Self.refusal(["--stuck=\(word)", "10.0.0.3"])
        #expect(refused.exitCode == 64)
        #expect(refused.message.contains("--stuck"), "\(refused.message)")
        #expect(refused.message.contains(reason), "\(refused.message)")
    }

    /// A combination of good values is still judged after parsing, with the same exit code.
    @Test func stuckWithUDPIsRefused() {
        let refused = Self.refusal(["--stuck", "3s", "--proto", "udp", "10.0.0.3"])
        #expect(refused.exitCode == 64)
        #expect(refused.message.contains("--stuck judges TCP connections"), "\(refused.message)")
    }

    @Test func theParsersAreTheLowerLayers() throws {
        #expect { try SocketStates(parsing: "bogus") } throws: { ($0 as? SocketStatesParseError)?.reason == .unknown("bogus") }
        #expect { try SocketStates(parsing: "listen") } throws: { ($0 as? SocketStatesParseError)?.reason == .nothingReapable }
        #expect(try SocketStates(parsing: "ESTABLISHED, syn_sent") == .reapByDefault)
        #expect(SocketStates.reapByDefault.description == "established,syn-sent")
        #expect(PositiveDuration(argument: "0") == nil)
        #expect(PositiveDuration(argument: "150ms")?.description == "150ms")
    }

    @Test func zonesAndNamespacesArriveTyped() throws {
        let options = try SelectionOptions.parse(["--zone", "7", "--zone", "0", "--netns", "blue", "--netns", "/proc/1/ns/net", "10.0.0.3"])
        #expect(options.zones == [.zone(7), .zone(0)] && options.zoneSelection == .only([0, 7]))
        #expect(options.netns == [.path("/run/netns/blue"), .path("/proc/1/ns/net")])
        let every = try SelectionOptions.parse(["--zone", "all", "--netns", "all", "10.0.0.3"])
        #expect(every.zoneSelection == .all && every.netns == [.all])
        #expect(try SelectionOptions.parse(["10.0.0.3"]).zoneSelection == .standard)
    }

    @Test(arguments: [
        (["--zone", "seven"], "--zone", "'seven' is not a conntrack zone: give a number from 0 to 65535, or 'all'"),
        (["--zone", "70000"], "--zone", "'70000' is not a conntrack zone"),
        (["--zone", "all", "--zone", "3"], "--zone all", "takes every zone: give it alone"),
        (["--netns", ".."], "--netns", "'..' names no namespace: give a name under /run/netns, a path, or 'all'"),
        (["--netns", "a/b"], "--netns", "'a/b' names no namespace"),
    ])
    func aBadZoneOrNamespaceIsNamed(arguments: [String], option: String, reason: String) {
        let refused = Self.refusal(arguments + ["10.0.0.3"])
        #expect(refused.exitCode == 64)
        #expect(refused.message.contains(option) && refused.message.contains(reason), "\(refused.message)")
    }
}
