import Foundation
import Health
import Logging
import NetworkAddress
import Prometheus
import Reaper
import OS

/// The one step every path's results go through: metrics, the audit line, /status. A reap of a
/// dead backend, a paced drain close and a stuck connection are accounted the same way. Public for
/// the simulation, which checks that every end it makes is in exactly one audit record.
public struct ReapAccounting: Sendable {
    let state: AgentState
    let metrics: AgentMetrics
    let logger: Logger
    let troubleLog = NetlinkTroubleLog()

    public init(state: AgentState, metrics: AgentMetrics, logger: Logger) {
        self.state = state
        self.metrics = metrics
        self.logger = logger
    }

    static let dryRunSample = 8
    /// The error a stuck or rebalance close's line names for a destroy left `.unconfirmed`.
    static let unconfirmedDestroy: Logger.MetadataValue = "destroy ack lost (ENOBUFS), and the socket was still there at the last look"
    static let allDownMessage = Logger.Message(
        stringLiteral:
            "every backend of the pool looks down: reaping nothing (the probes are the likely fault; set reap_when_all_down to override)")

    public struct Tally: Sendable {
        public var ended = 0
        public var leftByLimit = 0
        /// Connections ended, by their socket or by their conntrack entry alone (see
        /// `ReapOutcome.flowsEnded`).
        public var flowsEnded = 0
    }

    func changed(_ key: BackendKey, from: BackendState, to: BackendState, failure: ProbeFailure?, detail: String) {
        let label = key.backend.description
        metrics.transitions(pool: key.pool, backend: label, to: to.rawValue).increment()
        publish(key, state: to)
        var metadata: Logger.Metadata = ["pool": "\(key.pool)", "backend": "\(label)", "from": "\(from.rawValue)", "probe": "\(detail)"]
        if let failure { metadata["failure"] = "\(failure.rawValue)" }
        logger.notice("backend \(to.rawValue)", metadata: metadata)
    }

    /// The state gauges: 1 for the current state, 0 for the others; `backend_up` once it is known.
    func publish(_ key: BackendKey, state current: BackendState) {
        let label = key.backend.description
        for state in BackendState.allCases {
            metrics.backendState(pool: key.pool, backend: label, state: state).set(to: state == current ? 1 : 0)
        }
        // A backend not probed yet is neither up nor down: no sample, rather than a 0 that pages.
        if current == .unknown {
            metrics.forgetBackendUp(pool: key.pool, backend: label)
        } else {
            metrics.backendUp(pool: key.pool, backend: label).set(to: current == .up ? 1 : 0)
        }
    }

    func suppressed(pool: String, backend: Endpoint?, reason: SuppressReason, log: Bool) {
        metrics.reapsSuppressed(pool: pool, reason: reason).increment()
        guard log else { return }
        var metadata: Logger.Metadata = ["pool": "\(pool)", "reason": "\(reason.rawValue)"]
        if let backend { metadata["backend"] = "\(backend)" }
        switch reason {
        case .allBackendsDown:
            let backends = state.configuration.pools.first { $0.name == pool }?.backends.count ?? 0
            metadata["backends"] = "\(backends)"
            logger.error(Self.allDownMessage, metadata: metadata)
        case .unhealthyNotDead:
            logger.notice(
                "reap suppressed: probes reach the backend, it is unhealthy, not dead; its connections stay until drain_timeout",
                metadata: metadata)
        case .aliveEvidence:
            logger.notice("reap suppressed: nothing answers probes, but its connections still receive segments", metadata: metadata)
        case .budget:
            logger.warning("reap suppressed: the reconnect-storm budget is spent for now (max_sockets_per_second)", metadata: metadata)
        case .conntrackFull:
            logger.warning(
                "not dead: nothing answers its probes, but the conntrack table here is full and drops new flows", metadata: metadata)
        case .proberFault:
            logger.warning(
                "probe failed here, not at the backend (local ports, file descriptors, buffers or a local rule): no verdict",
                metadata: metadata)
        case .evidenceMissing:
            logger.warning(
                "not dead: nothing answers its probes, but its connections could not all be read (a namespace or a dump failed)",
                metadata: metadata)
        case .sharedBackend:
            logger.notice("reap held: another pool holding this backend does not find it dead (or has no survivor)", metadata: metadata)
        case .localFault:
            logger.warning(
                "stuck connections toward every backend of the pool at once: a fault on this side, nothing ended", metadata: metadata)
        case .shortOutage:
            logger.notice("not dead yet: silent for less than min_outage; TCP recovers a pause that short by itself", metadata: metadata)
        }
    }

    func earlyProbe(_ key: BackendKey, signal: EarlyDetection.Signal) {
        metrics.earlyProbes(pool: key.pool, backend: key.backend.description, signal: signal.rawValue).increment()
    }

    func suspected(_ key: BackendKey, signal: EarlyDetection.Signal, detail: String) {
        logger.notice(
            "early signal: probing the backend at once",
            metadata: ["pool": "\(key.pool)", "backend": "\(key.backend)", "signal": "\(signal.rawValue)", "detail": "\(detail)"])
    }

    func cleared(_ key: BackendKey, signal: EarlyDetection.Signal, verdict: EarlyDetection.Verdict, after: Duration) {
        logger.info(
            "early probes done",
            metadata: [
                "pool": "\(key.pool)", "backend": "\(key.backend)", "signal": "\(signal.rawValue)", "verdict": "\(verdict.rawValue)",
                "after_ms": .stringConvertible(Int(after.seconds * 1000)),
            ])
    }

    func returnProbe(_ key: BackendKey) {
        metrics.returnProbes(pool: key.pool, backend: key.backend.description).increment()
    }

    func answeredAgain(_ key: BackendKey, signal: EarlyDetection.Signal, after: Duration) {
        logger.notice(
            "answers again after an early dead verdict: its reaping is held",
            metadata: [
                "pool": "\(key.pool)", "backend": "\(key.backend)", "signal": "\(signal.rawValue)",
                "after_signal_ms": .stringConvertible(Int(after.seconds * 1000)),
            ])
    }

    func evidence(_ key: BackendKey, _ evidence: SegmentEvidence, since: ContinuousClock.Instant) {
        for failure in evidence.unreadable {
            logger.warning(
                "namespace not read: no verdict from its connections",
                metadata: ["pool": "\(key.pool)", "backend": "\(key.backend)", "error": "\(failure)"])
        }
        logger.debug(
            "evidence from the backend's own connections",
            metadata: [
                "pool": "\(key.pool)", "backend": "\(key.backend)", "sockets": "\(evidence.sockets)",
                "youngest_segment_ms": "\(evidence.youngestSegmentAge.map { "\(Int($0.seconds * 1000))" } ?? "none")",
                "window_ms": "\(Int((evidence.at - since).seconds * 1000))", "alive": "\(evidence.showsLife(after: since))",
            ])
    }

    /// A pass over one backend: a dead one's, a paced drain's, or `reap_on: unhealthy`'s.
    /// `episode`: what the pass was decided in, named on each audit line so the lines of one
    /// death read together (and a later death's apart).
    public func reaped(_ reports: [NamespaceReport], key: BackendKey, reason: ReapReason, episode: ReapEpisode? = nil, dryRun: Bool)
        -> Tally
    {
        var tally = Tally()
        for part in reports {
            netlinkTrouble(part, pool: key.pool, backend: key.backend)
            guard let report = part.report else {
                logger.error(
                    "reap could not run",
                    metadata: [
                        "pool": "\(key.pool)", "backend": "\(key.backend)", "netns": "\(part.namespace ?? "")",
                        "error": "\(part.failure ?? "")",
                    ])
                continue
            }
            let errors = report.allErrors.filter { !$0.meansConntrackAbsent }
            let ended = dryRun ? report.sockets.count : report.socketsEnded
            let deleted = dryRun ? report.conntrack.count : report.conntrackDeleted
            tally.ended += dryRun ? 0 : ended
            tally.flowsEnded += dryRun ? 0 : ended + report.flowsEndedByEntryAlone
            tally.leftByLimit += report.socketsLeftByLimit
            if !dryRun {
                metrics.socketsDestroyed(pool: key.pool, backend: key.backend.description, reason: reason).increment(by: Int64(ended))
                metrics.conntrackDeleted(pool: key.pool, backend: key.backend.description).increment(by: Int64(deleted))
            }
            for error in errors { metrics.destroyErrors(errno: error.errno.symbolicName).increment() }
            metrics.reapDuration(pool: key.pool).recordSeconds(report.durationSeconds)
            // The audit line: every first reap of a dead backend, and every later pass that did something.
            // In other namespaces (possibly every one on the node) only a pass that did something is logged.
            // A destroy or delete whose ack was lost and whose socket or entry is still there ended
            // nothing: not in `sockets`/`conntrack`, but the line says so (the trouble is counted apart).
            let unconfirmed = dryRun ? 0 : report.unconfirmed
            guard (reason == .dead && part.namespace == nil) || ended > 0 || deleted > 0 || !errors.isEmpty || unconfirmed > 0 else {
                continue
            }
            var metadata: Logger.Metadata = [
                "pool": "\(key.pool)", "backend": "\(key.backend)", "reason": "\(reason.rawValue)",
                "sockets": .stringConvertible(ended), "conntrack": .stringConvertible(deleted),
                "errors": .stringConvertible(errors.count),
                "duration_ms": .stringConvertible((report.durationSeconds * 1_000_000).rounded() / 1000),
                "dry_run": .stringConvertible(dryRun),
            ]
            if let namespace = part.namespace { metadata["netns"] = "\(namespace)" }
            if let episode { metadata["episode"] = .stringConvertible(episode) }
            if reason == .dead {
                // How the death was found, and how long after the first sign of it.
                if let early = state.earlyDetection(of: key) {
                    metadata["detected_by"] = "\(early.signal.rawValue)"
                    metadata["after_signal_ms"] = .stringConvertible(Int((ContinuousClock.now - early.since).seconds * 1000))
                } else {
                    metadata["detected_by"] = "probes"
                }
            }
            let natted = report.sockets.count { $0.throughConntrack }
            if natted > 0 { metadata["sockets_via_conntrack"] = .stringConvertible(natted) }
            if report.socketsLeftByLimit > 0 { metadata["left_for_later"] = .stringConvertible(report.socketsLeftByLimit) }
            if unconfirmed > 0 { metadata["unconfirmed"] = .stringConvertible(unconfirmed) }
            if dryRun, !report.sockets.isEmpty {
                // Name what would go, a few at least, so a dry run can be checked against `ss`.
                let sample = report.sockets.prefix(Self.dryRunSample).map { "\($0.socket.local)->\($0.socket.remote)" }
                metadata["would_end"] = "\(sample.joined(separator: ","))\(report.sockets.count > Self.dryRunSample ? ",..." : "")"
            }
            if let first = errors.first { metadata["error"] = "\(first.hint.map { "\(first): \($0)" } ?? first.description)" }
            logger.notice(dryRun ? "reap (dry run: nothing ended)" : "reaped", metadata: metadata)
            if logger.logLevel <= .debug {
                auditEachSocket(report, key: key, reason: reason, episode: episode, namespace: part.namespace, dryRun: dryRun)
            }
            state.recordReap(
                .init(
                    time: .now, reason: reason.rawValue, sockets: ended, conntrackEntries: deleted,
                    errors: errors.count, dryRun: dryRun), for: key)
        }
        return tally
    }

    /// `log_level: debug`: a line per socket a pass ended (or would end), so "why was this
    /// connection ended?" is answered by its 4-tuple or cookie.
    private func auditEachSocket(
        _ report: PurgeReport, key: BackendKey, reason: ReapReason, episode: ReapEpisode?, namespace: String?, dryRun: Bool
    ) {
        for result in report.sockets where dryRun || result.outcome == .ended {
            var metadata: Logger.Metadata = [
                "pool": "\(key.pool)", "backend": "\(key.backend)", "reason": "\(reason.rawValue)",
                "local": "\(result.socket.local)", "remote": "\(result.socket.remote)",
                "proto": "\(result.socket.transport == .tcp ? "tcp" : "udp")", "state": "\(result.socket.state)",
                "cookie": .stringConvertible(result.socket.id.cookie), "via_conntrack": .stringConvertible(result.throughConntrack),
            ]
            if let namespace { metadata["netns"] = "\(namespace)" }
            if let episode { metadata["episode"] = .stringConvertible(episode) }
            logger.debug(dryRun ? "socket would end" : "socket ended", metadata: metadata)
        }
    }

    /// A stuck scan over a pool: one audit line per condemned connection, with its evidence.
    public func stuck(_ reports: [NamespaceReport], pool: String, dryRun: Bool) -> Tally {
        var tally = Tally()
        for part in reports {
            guard let report = part.report else {
                if part.error != nil {
                    // A namespace that cannot be entered: counted and logged as for any pass.
                    netlinkTrouble(part, pool: pool, backend: nil)
                } else {
                    logger.error(
                        "stuck scan failed",
                        metadata: ["pool": "\(pool)", "netns": "\(part.namespace ?? "")", "error": "\(part.failure ?? "")"])
                }
                continue
            }
            // A dump begun again, an ack lost, a step refused: counted and logged as for any pass.
            netlinkTrouble(part, pool: pool, backend: nil)
            metrics.stuckScanDuration(pool: pool).recordSeconds(report.durationSeconds)
            tally.leftByLimit += report.socketsLeftByLimit
            guard !report.sockets.isEmpty else { continue }
            metrics.stuckFound(pool: pool).increment(by: Int64(report.sockets.count))
            if !dryRun {
                metrics.stuckEnded(pool: pool).increment(by: Int64(report.socketsEnded))
                tally.ended += report.socketsEnded
            }
            let deleted = report.conntrack.count { $0.outcome == .ended }
            for result in report.sockets {
                let socket = result.socket
                if !dryRun, result.outcome == .ended {
                    metrics.socketsDestroyed(pool: pool, backend: socket.remote.description, reason: .stuck).increment()
                }
                var metadata: Logger.Metadata = [
                    "pool": "\(pool)", "backend": "\(socket.remote)", "local": "\(socket.local)",
                    "reason": "stuck", "evidence": "\(StuckRule.evidence(socket))", "dry_run": .stringConvertible(dryRun),
                    "conntrack": .stringConvertible(deleted), "cookie": .stringConvertible(socket.id.cookie),
                ]
                if let namespace = part.namespace { metadata["netns"] = "\(namespace)" }
                if let error = result.outcome.error { metadata["error"] = "\(error)" }
                let unconfirmed = result.outcome == .unconfirmed
                if unconfirmed { metadata["error"] = Self.unconfirmedDestroy }
                logger.notice(dryRun ? "stuck connection (dry run: not ended)" : "stuck connection ended", metadata: metadata)
                if let backend = state.configuration.pools.first(where: { $0.name == pool })?.backends.first(where: { $0 == socket.remote })
                {
                    state.recordReap(
                        .init(
                            time: .now, reason: ReapReason.stuck.rawValue, sockets: 1, conntrackEntries: deleted,
                            errors: result.outcome.error == nil && !unconfirmed ? 0 : 1, dryRun: dryRun),
                        for: BackendKey(pool: pool, backend: backend))
                }
            }
        }
        return tally
    }
}

extension DurationHistogram {
    func recordSeconds(_ seconds: Double) {
        record(.nanoseconds(Int64(seconds * 1e9)))
    }
}
