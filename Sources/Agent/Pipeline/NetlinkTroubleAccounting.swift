import Logging
import NetworkAddress
import OS
import Reaper
import Synchronization

/// What went wrong between the agent and the kernel's tables during a pass, apart from the reap's own
/// outcome: a dump begun again after ENOBUFS or redone after NLM_F_DUMP_INTR, acks lost, a step the
/// kernel refused (EPERM, conntrack absent), a namespace that could not be entered. Each is counted
/// in `conn_reaper_netlink_errors_total` every time, and logged the first time and then at most once
/// a minute per kind and namespace (a backend kept reaped every 150 ms would otherwise flood the log).
final class NetlinkTroubleLog: Sendable {
    private let lastLogged = Mutex<[String: (at: ContinuousClock.Instant, unlogged: Int)]>([:])
    static let quietPeriod: Duration = .seconds(60)

    /// How many occurrences this line stands for (the ones since the last line), or nil: stay quiet.
    func shouldLog(_ key: String, count: Int, now: ContinuousClock.Instant = .now) -> Int? {
        lastLogged.withLock { logged in
            if let last = logged[key], now - last.at < Self.quietPeriod {
                logged[key]?.unlogged += count
                return nil
            }
            let total = (logged[key]?.unlogged ?? 0) + count
            logged[key] = (now, 0)
            return total
        }
    }
}

extension ReapAccounting {
    static func layerName(_ layer: SystemCallError.Layer) -> String {
        switch layer {
        case .sockDiag: "sock_diag"
        case .conntrack: "conntrack"
        case .route: "route"
        case .system: "system"
        }
    }

    /// Counts and logs one namespace's part of a pass: its troubles and its failed steps. `backend`
    /// is nil for a pass over a whole pool (a stuck scan).
    func netlinkTrouble(_ part: NamespaceReport, pool: String, backend: Endpoint?) {
        let namespace = part.namespace ?? ""
        var base: Logger.Metadata = ["pool": "\(pool)"]
        if let backend { base["backend"] = "\(backend)" }
        if let namespace = part.namespace { base["netns"] = "\(namespace)" }
        guard let report = part.report else {
            let error = part.error
            let errno = error?.errno.symbolicName ?? "unknown"
            // `setns(/run/netns/x)`: the path goes in the log line, not in a label.
            let operation = error?.name ?? "namespace"
            metrics.netlinkErrors(layer: "system", operation: operation, errno: errno).increment()
            if let count = troubleLog.shouldLog("namespace \(namespace) \(operation) \(errno)", count: 1) {
                var metadata = base
                metadata["operation"] = "\(operation)"
                metadata["errno"] = "\(errno)"
                metadata["error"] = "\(part.failure ?? "")"
                metadata["count"] = .stringConvertible(count)
                logger.error("namespace not reaped: it cannot be entered; the other namespaces are", metadata: metadata)
            }
            return
        }
        for (trouble, count) in report.troubles.sorted(by: { $0.key.description < $1.key.description }) {
            let operation = trouble.operation.rawValue
            let condition = trouble.condition.kernelName
            metrics.netlinkErrors(layer: Self.layerName(trouble.operation.layer), operation: operation, errno: condition)
                .increment(by: Int64(count))
            guard let logged = troubleLog.shouldLog("\(namespace) \(trouble)", count: count) else { continue }
            var metadata = base
            metadata["operation"] = "\(operation)"
            metadata["errno"] = "\(condition)"
            metadata["count"] = .stringConvertible(logged)
            let what: Logger.Message =
                switch trouble.condition {
                case .dumpInterrupted: "netlink dump interrupted (the table changed under it): dump redone"
                case .dumpOverrun: "netlink receive queue overflowed during a dump (ENOBUFS): dump begun again"
                case .acksLost: "netlink acks lost to a full receive queue (ENOBUFS): looked again and redone"
                }
            logger.warning(what, metadata: metadata)
        }
        let failed = report.stepErrors + report.sockets.compactMap(\.outcome.error) + report.conntrack.compactMap(\.outcome.error)
        var grouped: [String: (error: SystemCallError, count: Int)] = [:]
        for error in failed {
            let label = "\(Self.layerName(error.layer)) \(error.call) \(error.errno.symbolicName)"
            grouped[label, default: (error, 0)].count += 1
        }
        for (label, entry) in grouped.sorted(by: { $0.key < $1.key }) {
            let error = entry.error
            metrics.netlinkErrors(layer: Self.layerName(error.layer), operation: error.call, errno: error.errno.symbolicName)
                .increment(by: Int64(entry.count))
            guard let logged = troubleLog.shouldLog("\(namespace) \(label)", count: entry.count) else { continue }
            var metadata = base
            metadata["layer"] = "\(Self.layerName(error.layer))"
            metadata["operation"] = "\(error.call)"
            metadata["errno"] = "\(error.errno.symbolicName)"
            metadata["count"] = .stringConvertible(logged)
            metadata["error"] = "\(error.hint.map { "\(error): \($0)" } ?? error.description)"
            if error.meansConntrackAbsent {
                logger.warning("conntrack unavailable: sockets reaped, conntrack entries not", metadata: metadata)
            } else {
                logger.error("the kernel refused a step of the reap", metadata: metadata)
            }
        }
    }
}
