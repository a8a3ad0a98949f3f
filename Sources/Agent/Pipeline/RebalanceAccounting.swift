import Logging
import NetworkAddress
import Reaper

/// Rebalancing's part of the accounting: the connections gauge from each census, an audit line for
/// every connection ended (reason `rebalance`), and one line for each episode's start and end.
extension ReapAccounting {
    func census(_ pool: PoolConfiguration, _ connections: [ConnectionSample]) {
        var counts = Dictionary(uniqueKeysWithValues: pool.backends.map { ($0, 0) })
        for connection in connections where counts[connection.backend] != nil { counts[connection.backend]! += 1 }
        for (backend, count) in counts {
            metrics.backendConnections(pool: pool.name, backend: backend.description).set(to: Double(count))
        }
    }

    /// One rebalancing close: `ended` counts a dry run's would-end too, so the episode's allowance
    /// bounds a dry run's log as it bounds the real closes.
    func rebalanced(_ reports: [NamespaceReport], key: BackendKey, connection: ConnectionSample, dryRun: Bool) -> Tally {
        var tally = Tally()
        for part in reports {
            var metadata: Logger.Metadata = [
                "pool": "\(key.pool)", "backend": "\(key.backend)", "local": "\(connection.local)", "reason": "rebalance",
                "quiet_ms": "\(Int(connection.quietFor.seconds * 1000))", "dry_run": "\(dryRun)",
            ]
            if let namespace = part.namespace { metadata["netns"] = "\(namespace)" }
            guard let report = part.report else {
                metadata["error"] = "\(part.failure ?? "")"
                logger.error("rebalance close could not run", metadata: metadata)
                continue
            }
            netlinkTrouble(part, pool: key.pool, backend: key.backend)
            for error in report.allErrors { metrics.destroyErrors(errno: error.errno.symbolicName).increment() }
            guard let result = report.sockets.first else {
                logger.info("rebalance close skipped: the connection carries data now, or is gone", metadata: metadata)
                continue
            }
            if let error = result.outcome.error { metadata["error"] = "\(error)" }
            let unconfirmed = result.outcome == .unconfirmed
            if unconfirmed { metadata["error"] = Self.unconfirmedDestroy }
            if result.outcome == .ended {
                tally.ended += 1
                metrics.rebalanceClosed(pool: key.pool, backend: key.backend.description).increment()
                metrics.socketsDestroyed(pool: key.pool, backend: key.backend.description, reason: .rebalance).increment()
            } else if result.outcome == .wouldEnd {
                tally.ended += 1
            }
            logger.notice(dryRun ? "rebalance (dry run: not ended)" : "rebalanced connection ended", metadata: metadata)
            state.recordReap(
                .init(
                    time: .now, reason: ReapReason.rebalance.rawValue, sockets: result.outcome == .ended ? 1 : 0, conntrackEntries: 0,
                    errors: result.outcome.error == nil && !unconfirmed ? 0 : 1, dryRun: dryRun), for: key)
        }
        return tally
    }

    func rebalanceNews(pool: String, _ news: ReapPolicy.RebalanceNews) {
        func spread(_ counts: [Endpoint: Int]) -> String {
            counts.sorted { $0.key.description < $1.key.description }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        }
        switch news {
        case .started(let counts, let fairShare, let scope, let leftAlone):
            logger.notice(
                "rebalance started: connections are spread outside the tolerance",
                metadata: [
                    "pool": "\(pool)", "connections": "\(spread(counts))", "fair_share": "\((fairShare * 10).rounded() / 10)",
                    "owner": "\(scope)", "others_left_alone": .stringConvertible(leftAlone),
                ])
        case .balanced(let counts):
            logger.notice(
                "rebalance done: every backend within the tolerance", metadata: ["pool": "\(pool)", "connections": "\(spread(counts))"])
        case .gaveUp(let counts, let closed, let moved):
            logger.warning(
                "rebalance stopped: its closes did not move connections to the emptier backends (does the balancer pin clients?)",
                metadata: ["pool": "\(pool)", "connections": "\(spread(counts))", "closed": "\(closed)", "moved": "\(moved)"])
        case .interrupted(let backend, let closed):
            logger.notice(
                "rebalance stopped: a backend is no longer up",
                metadata: ["pool": "\(pool)", "backend": "\(backend)", "closed": "\(closed)"])
        }
    }
}
