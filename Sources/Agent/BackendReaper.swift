import Logging
import Prometheus
import Netlink
import NetworkAddress
import Reaper
import SockDiag

/// Reaps one backend's connections when its pool's policy allows: never when every backend of the
/// pool looks down, never past the sockets-per-second cap. Decides here; `KernelWorker` acts.
public actor BackendReaper {
    private let workers: KernelWorkers
    private let state: AgentState
    private let metrics: AgentMetrics
    private let logger: Logger
    private var tokens: Double
    private var lastRefill = ContinuousClock.now

    public init(workers: KernelWorkers, state: AgentState, metrics: AgentMetrics, logger: Logger) {
        self.workers = workers
        self.state = state
        self.metrics = metrics
        self.logger = logger
        self.tokens = Double(state.configuration.maxSocketsPerSecond)
    }

    static let dryRunSample = 8

    public enum Reason: String, Sendable {
        /// The backend just went down.
        case down
        /// Still down: catches new connects (SYN_SENT) and anything that slipped in.
        case stillDown = "still-down"
    }

    /// `probeOthers` probes the pool's other backends now and records the results; it is used when
    /// no survivor is known yet, so that a real survivor costs one fast probe, not an interval.
    public func reap(
        pool: PoolConfiguration, backend: Endpoint, reason: Reason, probeOthers: (@Sendable () async -> Void)? = nil
    ) async {
        let configuration = state.configuration
        if state.isRecovering(pool: pool.name, backend: backend) { return }
        if !configuration.reapWhenAllDown, state.survivor(pool: pool.name, besides: backend) == nil, let probeOthers {
            await probeOthers()
        }
        if !configuration.reapWhenAllDown, state.survivor(pool: pool.name, besides: backend) == nil {
            metrics.reapsSkipped(pool: pool.name, reason: "all_backends_down").increment()
            if state.enterGuard(pool: pool.name) {
                logger.error("every backend of the pool looks down: reaping nothing (the probes are the likely fault; set reap_when_all_down to override)",
                             metadata: ["pool": "\(pool.name)", "backends": "\(pool.backends.count)"])
            }
            return
        }
        if state.leaveGuard(pool: pool.name) {
            logger.notice("a backend of the pool is up again: reaping resumes", metadata: ["pool": "\(pool.name)"])
        }
        let matcher = DestinationMatcher(
            destinations: [Destination(address: backend.address, port: backend.port)], transports: pool.protocols)
        for (namespace, worker) in await workers.workers(for: configuration.namespaces(of: pool), refresh: reason == .down) {
            refill(perSecond: configuration.maxSocketsPerSecond)
            let allowance = Int(tokens)
            guard allowance > 0 else {
                metrics.reapsSkipped(pool: pool.name, reason: "rate_limited").increment()
                return
            }
            var options = Purger.Options(dryRun: configuration.dryRun)
            options.socketLimit = allowance
            options.sparingOwnSockets = true
            let report: PurgeReport
            do {
                report = try await worker.purge(matcher, options: options)
            } catch {
                var metadata: Logger.Metadata = ["pool": "\(pool.name)", "backend": "\(backend)", "error": "\(error)"]
                if let namespace {
                    metadata["netns"] = "\(namespace)"
                    await workers.drop(worker)  // vanished, or not enterable: a fresh worker next time
                }
                logger.error("reap could not run", metadata: metadata)
                continue
            }
            tokens -= Double(report.sockets.count)
            account(report, pool: pool, backend: backend, reason: reason, dryRun: configuration.dryRun, namespace: namespace)
        }
    }

    private func refill(perSecond: Int) {
        let now = ContinuousClock.now
        tokens = min(Double(perSecond), tokens + (now - lastRefill).seconds * Double(perSecond))
        lastRefill = now
    }

    private func account(
        _ report: PurgeReport, pool: PoolConfiguration, backend: Endpoint, reason: Reason, dryRun: Bool, namespace: String?
    ) {
        let errors = report.allErrors.filter { !$0.meansConntrackAbsent }
        let ended = dryRun ? report.sockets.count : report.socketsEnded
        let deleted = dryRun ? report.conntrack.count : report.conntrackDeleted
        if !dryRun {
            metrics.socketsDestroyed(pool: pool.name, backend: backend.description).increment(by: Int64(ended))
            metrics.conntrackDeleted(pool: pool.name, backend: backend.description).increment(by: Int64(deleted))
        }
        for error in errors { metrics.destroyErrors(errno: Self.errnoName(error)).increment() }
        metrics.reapDuration(pool: pool.name).recordSeconds(report.durationSeconds)
        // The audit line: every reap on a transition, and every later one that ended something.
        // In other namespaces (possibly every one on the node) only a reap that did something is logged.
        guard (reason == .down && namespace == nil) || ended > 0 || deleted > 0 || !errors.isEmpty else { return }
        var metadata: Logger.Metadata = [
            "pool": "\(pool.name)", "backend": "\(backend)", "reason": "\(reason.rawValue)",
            "sockets": "\(ended)", "conntrack": "\(deleted)", "errors": "\(errors.count)",
            "duration_ms": "\((report.durationSeconds * 1_000_000).rounded() / 1000)", "dry_run": "\(dryRun)",
        ]
        if let namespace { metadata["netns"] = "\(namespace)" }
        let natted = report.sockets.count { $0.throughConntrack }
        if natted > 0 { metadata["sockets_via_conntrack"] = "\(natted)" }
        if report.socketsLeftByLimit > 0 { metadata["rate_limited_sockets"] = "\(report.socketsLeftByLimit)" }
        if dryRun, !report.sockets.isEmpty {
            // Name what would go, a few at least, so a dry run can be checked against `ss`.
            let sample = report.sockets.prefix(Self.dryRunSample).map { "\($0.socket.local)->\($0.socket.remote)" }
            metadata["would_end"] = "\(sample.joined(separator: ","))\(report.sockets.count > Self.dryRunSample ? ",..." : "")"
        }
        if let first = errors.first { metadata["error"] = "\(first.hint.map { "\(first): \($0)" } ?? first.description)" }
        logger.notice(dryRun ? "reap (dry run: nothing ended)" : "reaped", metadata: metadata)
        let summary = AgentState.ReapSummary(
            time: .now, reason: reason.rawValue, sockets: ended, conntrackEntries: deleted, errors: errors.count, dryRun: dryRun)
        state.recordReap(summary, pool: pool.name, backend: backend)
    }

    static func errnoName(_ error: SystemCallError) -> String {
        switch error.errno {
        case .notPermitted: "EPERM"
        case .notSupported: "EOPNOTSUPP"
        case .noBufferSpace: "ENOBUFS"
        case .noSuchFileOrDirectory: "ENOENT"
        case .invalidArgument: "EINVAL"
        default: "errno_\(error.errno.rawValue)"
        }
    }
}

extension DurationHistogram {
    func recordSeconds(_ seconds: Double) {
        record(.nanoseconds(Int64(seconds * 1e9)))
    }
}
