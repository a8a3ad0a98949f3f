import Reaper
import Testing
import OS

/// Which layer failed is told by the error's type, not by the call's name: the same call failing
/// on the sock_diag socket is a failure, on the conntrack socket an absent conntrack.
@Suite struct FailureHintTests {
    @Test func onlyTheConntrackLayerCanBeAbsent() {
        let conntrack = SystemCallError(call: "mnl_socket_open2", errno: .protocolNotSupported, layer: .conntrack)
        let sockDiag = SystemCallError(call: "mnl_socket_open2", errno: .protocolNotSupported, layer: .sockDiag)
        #expect(conntrack.meansConntrackAbsent)
        #expect(!sockDiag.meansConntrackAbsent)
        #expect(conntrack.hint?.contains("nf_conntrack_netlink") == true)
        #expect(sockDiag.hint == nil)
    }

    @Test func destroyUnsupportedNamesTheKernelOption() {
        let error = SystemCallError(call: "SOCK_DESTROY", errno: .notSupported, layer: .sockDiag)
        #expect(error.hint == "kernel built without CONFIG_INET_DIAG_DESTROY")
        #expect(!error.meansConntrackAbsent)
    }
}
