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
        let error = SystemCallError(.socketDestroy, errno: .notSupported)
        #expect(error.hint == "kernel built without CONFIG_INET_DIAG_DESTROY")
        #expect(!error.meansConntrackAbsent)
        // Errors, labels and log lines name it as the kernel headers do, from the one spelling.
        #expect(error.call == NetlinkOperation.socketDestroy.rawValue && error.layer == .sockDiag)
    }

    /// The hint follows the operation, not its spelling: a dump refused on the same socket is not a
    /// kernel without SOCK_DESTROY, nor is a call that only happens to be named like one.
    @Test func onlyTheDestroyOperationGetsTheDestroyHint() {
        #expect(SystemCallError(.socketDiagnosis, errno: .notSupported).hint == nil)
        let namedLikeIt = SystemCallError(call: NetlinkOperation.socketDestroy.rawValue, errno: .notSupported, layer: .sockDiag)
        #expect(namedLikeIt.hint == nil)
    }

    @Test func aFlushIsADeleteWithItsDetailInTheName() {
        let error = SystemCallError(.conntrackDelete, errno: .invalidArgument, detail: "filtered flush")
        #expect(error.operation == .conntrackDelete && error.layer == .conntrack)
        #expect(error.description == "IPCTNL_MSG_CT_DELETE (filtered flush): Invalid argument (errno 22)")
    }
}
