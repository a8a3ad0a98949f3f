import Conntrack
import Foundation
import Health
import Logging
import NetworkAddress
import OS
import Reaper
import SockDiag
import Synchronization
import Testing

@testable import Agent

/// The executor and its accounting against a fake kernel: what the policy decides reaches the
/// kernel with the budget as its limit, and every path (dead, stuck) lands in metrics and /status.
@Suite struct ReapExecutorTests {
    final class FakeKernel: ReapKernel {
        let requests = Mutex<[KernelReapRequest]>([])
        let stuckLimits = Mutex<[Int]>([])
        let sockets: [DiagnosedSocket]
        let segmentAge: Duration?
        /// What a census finds; the connections a rebalance asked to end.
        let connections: [ConnectionSample]
        let rebalanced = Mutex<[ConnectionSample]>([])

        init(sockets: [DiagnosedSocket], segmentAge: Duration?, connections: [ConnectionSample] = []) {
            self.sockets = sockets
            self.segmentAge = segmentAge
            self.connections = connections
        }

        func reap(_ request: KernelReapRequest, while stillRuns: @escaping @Sendable () -> Bool) async -> [NamespaceReport] {
            requests.withLock { $0.append(request) }
            guard stillRuns() else { return [] }
            var report = PurgeReport()
            if request.scope == .full {
                report.sockets = sockets.prefix(request.limit).map { .init(socket: $0, outcome: .ended) }
                report.socketsLeftByLimit = max(0, sockets.count - request.limit)
            }
            return [NamespaceReport(namespace: nil, report: report)]
        }

        func scanStuck(_ pool: PoolConfiguration, limit: Int, dryRun: Bool, namespaces: NamespaceSelection?) async -> [NamespaceReport] {
            stuckLimits.withLock { $0.append(limit) }
            var report = PurgeReport()
            report.sockets = [.init(socket: sockets[0], outcome: .ended)]
            return [NamespaceReport(namespace: nil, report: report)]
        }

        func evidence(toward backend: Endpoint, transports: Set<TransportProtocol>, namespaces: NamespaceSelection?) async
            -> SegmentEvidence
        {
            SegmentEvidence(at: .now, sockets: sockets.count, youngestSegmentAge: segmentAge)
        }

        func countConnections(toward backend: Endpoint, transports: Set<TransportProtocol>, namespaces: NamespaceSelection?) async -> Int {
            sockets.count
        }

        func watchNewFlows(
            _ key: BackendKey, transports: Set<TransportProtocol>, zones: ConntrackZones, namespaces: NamespaceSelection?,
            announce: @escaping @Sendable (AnnouncedFlow) -> Void, lost: @escaping @Sendable (_ stopped: Bool) -> Void
        ) async -> Bool { false }

        func unwatchNewFlows(_ key: BackendKey) async {}

        func endFlow(_ flow: AnnouncedFlow, dryRun: Bool) async -> [NamespaceReport] { [] }

        func census(_ pool: PoolConfiguration, namespaces: NamespaceSelection?) async -> [ConnectionSample] { connections }

        func endQuietConnection(_ connection: ConnectionSample, dryRun: Bool) async -> [NamespaceReport] {
            rebalanced.withLock { $0.append(connection) }
            var report = PurgeReport()
            let socket = DiagnosedSocket(
                family: .inet, transport: .tcp, state: .established,
                id: SocketID(source: connection.local, destination: connection.backend, cookie: connection.cookie))
            report.sockets = [.init(socket: socket, outcome: dryRun ? .wouldEnd : .ended)]
            return [NamespaceReport(namespace: nil, report: report)]
        }
    }

    static let backends = ["10.9.0.1:443", "10.9.0.2:443"].map { try! EndpointParsing.parse($0) }

    static func socket(_ port: UInt16) -> DiagnosedSocket {
        DiagnosedSocket(
            family: .inet, transport: .tcp, state: .established,
            id: SocketID(source: Endpoint(address: .v4(0x0A09_0064), port: port), destination: backends[1]))
    }

    static func configuration(stuckAfter: Duration = .zero) -> AgentConfiguration {
        var pool = PoolConfiguration(name: "web", backends: backends)
        pool.rise = 1
        pool.fall = 1
        pool.stuckAfter = stuckAfter
        var configuration = AgentConfiguration()
        configuration.pools = [pool]
        configuration.maxSocketsPerSecond = 10
        configuration.maxSocketsBurst = 3
        return configuration
    }

    static func waitFor(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<300 where !condition() { try await Task.sleep(for: .milliseconds(10)) }
        #expect(condition(), "\(what) did not happen within 3 s")
    }

    @Test func aDeadBackendIsReapedWithinTheBudgetAndAccounted() async throws {
        let kernel = FakeKernel(sockets: (40000..<40005).map { Self.socket($0) }, segmentAge: .seconds(30))
        let state = AgentState(configuration: Self.configuration())
        let metrics = AgentMetrics()
        let executor = ReapExecutor(state: state, kernel: kernel, metrics: metrics, logger: Logger(label: "test"))
        let running = Task { try await executor.run() }
        defer { running.cancel() }
        let live = BackendKey(pool: "web", backend: Self.backends[0]), dead = BackendKey(pool: "web", backend: Self.backends[1])
        executor.submit(.probed(live, .succeeded(after: .milliseconds(1), "connected"), at: .now))
        executor.submit(.probed(dead, .succeeded(after: .milliseconds(1), "connected"), at: .now))
        try await Task.sleep(for: .milliseconds(5))
        executor.submit(.probed(dead, ProbeResult(failure: .unreachable, duration: .milliseconds(2), detail: "connect timeout"), at: .now))
        try await Task.sleep(for: .milliseconds(5))
        executor.submit(.probed(live, .succeeded(after: .milliseconds(1), "connected"), at: .now))

        try await Self.waitFor("the first reap") { !kernel.requests.withLock { $0.isEmpty } }
        let first = try #require(kernel.requests.withLock { $0.first })
        #expect(first.backend == dead.backend && first.scope == .full && first.limit == 3)  // the burst, not the 5 it has
        try await Self.waitFor("the budget suppression") {
            metrics.exposition().contains(#"conn_reaper_reaps_suppressed_total{pool="web",reason="budget"} "#)
        }
        let exposition = metrics.exposition()
        #expect(exposition.contains(#"conn_reaper_sockets_destroyed_total{pool="web",backend="10.9.0.2:443",reason="dead"} 3"#))
        #expect(exposition.contains(#"conn_reaper_backend_state{pool="web",backend="10.9.0.2:443",state="dead"} 1"#))
        #expect(exposition.contains(#"conn_reaper_backend_state{pool="web",backend="10.9.0.2:443",state="up"} 0"#))
        let backend = try #require(state.status().pools.first?.backends.first { $0.address == "10.9.0.2:443" })
        #expect(backend.state == .dead && backend.lastFailure == .unreachable)
        #expect(backend.lastReap.map { ($0.reason == "dead" && $0.sockets == 3) || $0.reason == "still-dead" } == true)
        // The two the budget left are established sockets: full passes take them as tokens come back.
        try await Self.waitFor("a full pass for what the budget left") {
            kernel.requests.withLock { $0.dropFirst().contains { $0.scope == .full } }
        }
    }

    @Test func aBackendWhoseConnectionsStillReceiveIsNeverReaped() async throws {
        let kernel = FakeKernel(sockets: [Self.socket(40000)], segmentAge: .zero)
        let state = AgentState(configuration: Self.configuration())
        let metrics = AgentMetrics()
        let executor = ReapExecutor(state: state, kernel: kernel, metrics: metrics, logger: Logger(label: "test"))
        let running = Task { try await executor.run() }
        defer { running.cancel() }
        let dead = BackendKey(pool: "web", backend: Self.backends[1])
        executor.submit(.probed(BackendKey(pool: "web", backend: Self.backends[0]), .succeeded(after: .zero, "connected"), at: .now))
        executor.submit(
            .probed(
                dead, ProbeResult(failure: .unreachable, duration: .milliseconds(1), detail: "connect timeout"),
                at: .now - .milliseconds(50)))
        try await Self.waitFor("the alive_evidence suppression") {
            metrics.exposition().contains(#"conn_reaper_reaps_suppressed_total{pool="web",reason="alive_evidence"} 1"#)
        }
        try await Task.sleep(for: .milliseconds(200))
        #expect(kernel.requests.withLock { $0.isEmpty })
        #expect(state.state(of: dead) == .unhealthy)
    }

    @Test func stuckScansAreLimitedByTheBudgetAndAccountedLikeEveryReap() async throws {
        let kernel = FakeKernel(sockets: [Self.socket(40001)], segmentAge: nil)
        let state = AgentState(configuration: Self.configuration(stuckAfter: .milliseconds(400)))
        let metrics = AgentMetrics()
        let executor = ReapExecutor(state: state, kernel: kernel, metrics: metrics, logger: Logger(label: "test"))
        let running = Task { try await executor.run() }
        defer { running.cancel() }
        // Only where a backend answers now: a stuck connection's client has somewhere to reconnect.
        for backend in Self.backends {
            executor.submit(.probed(BackendKey(pool: "web", backend: backend), .succeeded(after: .zero, "connected"), at: .now))
        }
        executor.submit(.tick(.now))
        try await Self.waitFor("two stuck scans") { kernel.stuckLimits.withLock { $0.count >= 2 } }
        let limits = kernel.stuckLimits.withLock { $0 }
        #expect(limits[0] == 3 && limits[1] <= 3)  // the second paid for the first's socket
        let exposition = metrics.exposition()
        #expect(exposition.contains(#"conn_reaper_stuck_sockets_ended_total{pool="web"}"#))
        #expect(exposition.contains(#"conn_reaper_sockets_destroyed_total{pool="web",backend="10.9.0.2:443",reason="stuck"}"#))
        let backend = try #require(state.status().pools.first?.backends.first { $0.address == "10.9.0.2:443" })
        #expect(backend.lastReap?.reason == "stuck")
    }

    /// A stuck scan's and a rebalance close's netlink trouble (a dump begun again after ENOBUFS) is
    /// counted like a reap pass's, with the pool and, where there is one, the backend.
    @Test func stuckAndRebalancePassesCountTheirNetlinkTrouble() {
        let metrics = AgentMetrics()
        let accounting = ReapAccounting(
            state: AgentState(configuration: Self.configuration()), metrics: metrics, logger: Logger(label: "test"))
        var troubled = PurgeReport()
        troubled.troubles[NetlinkTrouble(.socketDiagnosis, .dumpOverrun)] = 2
        _ = accounting.stuck([NamespaceReport(namespace: nil, report: troubled)], pool: "web", dryRun: false)
        let connection = ConnectionSample(
            backend: Self.backends[0], local: Endpoint(address: .v4(0x0A09_0064), port: 41000), cookie: 1,
            sinceDataSent: .seconds(30), sinceDataReceived: .seconds(30))
        _ = accounting.rebalanced(
            [NamespaceReport(namespace: nil, report: troubled)], key: BackendKey(pool: "web", backend: Self.backends[0]),
            connection: connection, dryRun: false)
        #expect(
            metrics.exposition().contains(
                #"conn_reaper_netlink_errors_total{layer="sock_diag",operation="SOCK_DIAG_BY_FAMILY",errno="ENOBUFS"} 4"#))
    }

    /// A namespace that cannot be entered is counted under its call's name, the path only logged
    /// (a stopped thread too: its label had been "NamespaceThread " with the space before "(").
    @Test func aNamespaceFailureIsLabelledByTheCallAlone() {
        let metrics = AgentMetrics()
        let accounting = ReapAccounting(
            state: AgentState(configuration: Self.configuration()), metrics: metrics, logger: Logger(label: "test"))
        let setns = SystemCallError(call: "setns", argument: "/run/netns/a", errno: .invalidArgument)
        #expect(setns.description.hasPrefix("setns(/run/netns/a): ") && setns.name == "setns")
        accounting.netlinkTrouble(NamespaceReport(namespace: "/run/netns/a", failure: "\(setns)", error: setns), pool: "web", backend: nil)
        accounting.netlinkTrouble(
            NamespaceReport(namespace: "/run/netns/b", failure: "stopped", error: NamespaceThread.stoppedError), pool: "web", backend: nil)
        let exposition = metrics.exposition()
        #expect(exposition.contains(#"conn_reaper_netlink_errors_total{layer="system",operation="setns",errno="EINVAL"} 1"#))
        #expect(exposition.contains(#"conn_reaper_netlink_errors_total{layer="system",operation="NamespaceThread",errno="EBADF"} 1"#))
    }

    /// A stuck scan that could not enter a namespace counts it as a reap pass does; a scan whose
    /// dump failed without a call's error (cut short) is only logged.
    @Test func aStuckScanCountsANamespaceItCouldNotEnter() {
        let metrics = AgentMetrics()
        let accounting = ReapAccounting(
            state: AgentState(configuration: Self.configuration()), metrics: metrics, logger: Logger(label: "test"))
        let setns = SystemCallError(call: "setns", argument: "/run/netns/a", errno: .invalidArgument)
        _ = accounting.stuck(
            [
                NamespaceReport(namespace: "/run/netns/a", failure: "\(setns)", error: setns),
                NamespaceReport(namespace: "/run/netns/b", failure: "socket dump failed: []"),
            ], pool: "web", dryRun: false)
        let counted = metrics.exposition().split(separator: "\n").filter { $0.hasPrefix("conn_reaper_netlink_errors_total{") }
        #expect(counted == [#"conn_reaper_netlink_errors_total{layer="system",operation="setns",errno="EINVAL"} 1"#], "\(counted)")
    }

    /// Each kind of trouble keeps the labels operators and the kernel tests know it by.
    @Test func netlinkTroubleIsLabelledAsTheKernelNamesIt() {
        let metrics = AgentMetrics()
        let accounting = ReapAccounting(
            state: AgentState(configuration: Self.configuration()), metrics: metrics, logger: Logger(label: "test"))
        var troubled = PurgeReport()
        troubled.troubles[NetlinkTrouble(.conntrackGet, .dumpInterrupted)] = 1
        troubled.troubles[NetlinkTrouble(.socketDestroy, .acksLost)] = 3
        troubled.troubles[NetlinkTrouble(.conntrackDelete, .acksLost)] = 5
        _ = accounting.stuck([NamespaceReport(namespace: nil, report: troubled)], pool: "web", dryRun: false)
        let exposition = metrics.exposition()
        #expect(
            exposition.contains(
                #"conn_reaper_netlink_errors_total{layer="conntrack",operation="IPCTNL_MSG_CT_GET",errno="NLM_F_DUMP_INTR"} 1"#))
        #expect(exposition.contains(#"conn_reaper_netlink_errors_total{layer="sock_diag",operation="SOCK_DESTROY",errno="ENOBUFS"} 3"#))
        #expect(
            exposition.contains(#"conn_reaper_netlink_errors_total{layer="conntrack",operation="IPCTNL_MSG_CT_DELETE",errno="ENOBUFS"} 5"#))
    }

    @Test func aRebalanceCloseIsCountedPerBackendAndTheCensusFeedsTheGauge() async throws {
        let quiet = (0..<3).map { number in
            ConnectionSample(
                backend: Self.backends[0], local: Endpoint(address: .v4(0x0A09_0064), port: UInt16(41000 + number)), cookie: UInt64(number),
                sinceDataSent: .seconds(30), sinceDataReceived: .seconds(30))
        }
        let kernel = FakeKernel(sockets: [], segmentAge: nil, connections: quiet)
        var configuration = Self.configuration()
        configuration.pools[0].rebalance = true
        configuration.pools[0].rebalanceRate = 5  // the first close within 200 ms, the next no sooner than 150 ms after
        let state = AgentState(configuration: configuration)
        let metrics = AgentMetrics()
        let executor = ReapExecutor(state: state, kernel: kernel, metrics: metrics, logger: Logger(label: "test"))
        let running = Task { try await executor.run() }
        defer { running.cancel() }
        // Both up more than a hold-down ago: the first tick takes a census, which finds 3-0.
        let longAgo = ContinuousClock.now - .seconds(11)
        for backend in Self.backends {
            executor.submit(.probed(BackendKey(pool: "web", backend: backend), .succeeded(after: .zero, "ok"), at: longAgo))
        }
        executor.submit(.tick(.now))
        // The fake kernel's census finds 3-0 whatever was closed: after 3 closes that moved nothing and
        // one more, the episode gives up (a balancer pinning clients is not churned forever).
        try await Self.waitFor("the episode to give up") { kernel.rebalanced.withLock { $0.count } == 4 }
        try await Task.sleep(for: .milliseconds(500))
        #expect(kernel.rebalanced.withLock { $0.count } == 4)
        let exposition = metrics.exposition()
        #expect(exposition.contains(#"conn_reaper_rebalance_closed_total{pool="web",backend="10.9.0.1:443"} 4"#))
        #expect(exposition.contains(#"conn_reaper_backend_connections{pool="web",backend="10.9.0.1:443"} 3"#))
        #expect(exposition.contains(#"conn_reaper_backend_connections{pool="web",backend="10.9.0.2:443"} 0"#))
        #expect(exposition.contains(#"conn_reaper_sockets_destroyed_total{pool="web",backend="10.9.0.1:443",reason="rebalance"} 4"#))
        let backend = try #require(state.status().pools.first?.backends.first { $0.address == "10.9.0.1:443" })
        #expect(backend.lastReap?.reason == "rebalance")
    }
}
