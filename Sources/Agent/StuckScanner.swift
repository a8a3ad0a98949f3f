import Logging
import NetworkAddress
import Reaper

/// Scans one pool's connections for stuck ones (see StuckRule) and ends them, whatever the probes
/// say: a balancer that lost a flow's state still accepts new connections, so probes pass.
struct StuckScanner: Sendable {
    let pool: PoolConfiguration
    let workers: KernelWorkers
    let state: AgentState
    let metrics: AgentMetrics
    let logger: Logger

    /// Four scans per `stuck_after`: a blackholed connection is ended at most a quarter late. Each
    /// scan is one kernel-filtered dump with tcp_info of the pool's sockets only.
    static func period(for after: Duration) -> Duration {
        min(max(after / 4, .milliseconds(100)), .seconds(5))
    }

    func run() async {
        let period = Self.period(for: pool.stuckAfter)
        let afterMilliseconds = UInt32(min(pool.stuckAfter.seconds * 1000, Double(UInt32.max)))
        let destinations = pool.backends.map { Destination(address: $0.address, port: $0.port) }
        let found = metrics.stuckFound(pool: pool.name)
        let ended = metrics.stuckEnded(pool: pool.name)
        let scanDuration = metrics.stuckScanDuration(pool: pool.name)
        var suspects: [String: Set<UInt64>] = [:]  // per namespace ("" for the agent's own)
        logger.info("stuck-connection detector on", metadata: [
            "pool": "\(pool.name)", "stuck_after": "\(DurationParsing.format(pool.stuckAfter))", "scan_every": "\(DurationParsing.format(period))",
        ])
        while !Task.isCancelled {
            try? await Task.sleep(for: period)
            guard !Task.isCancelled else { return }
            let dryRun = state.configuration.dryRun
            let configuration = state.configuration
            for (namespace, worker) in await workers.workers(for: configuration.namespaces(of: pool)) {
                let key = namespace ?? ""
                let matcher = DestinationMatcher(
                    destinations: destinations, transports: [.tcp],
                    stuck: StuckRule(afterMilliseconds: afterMilliseconds, previouslySuspected: suspects[key] ?? []))
                let report: PurgeReport
                var options = Purger.Options(dryRun: dryRun)
                options.sparingOwnSockets = true
                do { report = try await worker.purge(matcher, options: options) } catch {
                    logger.error("stuck scan failed", metadata: ["pool": "\(pool.name)", "netns": "\(key)", "error": "\(error)"])
                    continue
                }
                suspects[key] = report.stuckSuspects
                scanDuration.recordSeconds(report.durationSeconds)
                guard !report.sockets.isEmpty else { continue }
                found.increment(by: Int64(report.sockets.count))
                if !dryRun { ended.increment(by: Int64(report.socketsEnded)) }
                for result in report.sockets {
                    let socket = result.socket
                    var metadata: Logger.Metadata = [
                        "pool": "\(pool.name)", "backend": "\(socket.remote)", "local": "\(socket.local)",
                        "reason": "stuck", "evidence": "\(StuckRule.evidence(socket))", "dry_run": "\(dryRun)",
                        "conntrack": "\(report.conntrack.count { $0.outcome == .ended })",
                    ]
                    if let namespace { metadata["netns"] = "\(namespace)" }
                    if let error = result.outcome.error { metadata["error"] = "\(error)" }
                    logger.notice(dryRun ? "stuck connection (dry run: not ended)" : "stuck connection ended", metadata: metadata)
                }
            }
        }
    }
}
