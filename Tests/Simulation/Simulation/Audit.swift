import Agent
import Logging
import Reaper
import Synchronization

/// The audit as an operator reads it: every record the agent's accounting logs, kept in order.
final class AuditCapture: Sendable {
    struct Record: Sendable {
        var message: String
        var metadata: [String: String]
    }

    private let records = Mutex<[Record]>([])

    var count: Int { records.withLock { $0.count } }

    func since(_ index: Int) -> [Record] { records.withLock { Array($0[index...]) } }

    func append(_ record: Record) { records.withLock { $0.append(record) } }

    func logger() -> Logger {
        var logger = Logger(label: "conn-reaper.audit") { _ in AuditHandler(capture: self) }
        logger.logLevel = .debug
        return logger
    }
}

struct AuditHandler: LogHandler {
    let capture: AuditCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = metadata.merging(event.metadata ?? [:]) { $1 }.mapValues(\.description)
        capture.append(.init(message: event.message.description, metadata: fields))
    }
}

extension Simulator {
    /// A pass's ends go through the agent's own accounting (ReapAccounting), as the executor sends
    /// the kernel's answers there; then its records must name every ended connection exactly once,
    /// with the pass's reason, and nothing else; and its tally must count them.
    func account(_ ended: [Connection], key: BackendKey?, pool: String, reason: ReapReason) {
        var report = PurgeReport()
        report.sockets = ended.map { PurgeReport.SocketResult(socket: diagnosed($0), outcome: .ended) }
        let first = audit.count
        let parts = [NamespaceReport(namespace: nil, report: report)]
        let tally =
            key.map { accounting.reaped(parts, key: $0, reason: reason, dryRun: false) }
            ?? accounting.stuck(parts, pool: pool, dryRun: false)
        if tally.ended != ended.count { fail("the accounting counted \(tally.ended) of a pass's \(ended.count) ends") }
        var named: [String: Int] = [:]
        for record in audit.since(first) where record.message == "socket ended" || record.message == "stuck connection ended" {
            guard let cookie = record.metadata["cookie"] else {
                fail("an audit record of an end names no cookie: \(record.message)")
                continue
            }
            named[cookie, default: 0] += 1
            if record.metadata["reason"] != reason.rawValue {
                fail("an end audited as \(record.metadata["reason"] ?? "none"), not \(reason.rawValue)")
            }
        }
        let expected = Set(ended.map { "\($0.id + 1)" })
        if let twice = named.first(where: { $0.value != 1 }) { fail("connection \(twice.key) is in \(twice.value) audit records") }
        if Set(named.keys) != expected {
            fail("the audit names \(named.keys.sorted()) for ends \(expected.sorted()) (\(reason.rawValue))")
        }
        if key != nil, !ended.isEmpty {
            let summaries = audit.since(first).filter { $0.message == "reaped" }
            if summaries.count != 1 || summaries.first?.metadata["sockets"] != "\(ended.count)" {
                fail("a pass that ended \(ended.count) has summary lines \(summaries.map { $0.metadata["sockets"] ?? "?" })")
            }
        }
    }

    /// At the horizon: the metric every dashboard reads counts what the audit named, by reason.
    func checkMetricsAgainstAudit() {
        var counted: [String: Double] = [:]
        for line in metrics.registry.emitToString().split(separator: "\n") where line.hasPrefix("conn_reaper_sockets_destroyed_total{") {
            guard let reasonStart = line.range(of: "reason=\"") else { continue }
            let reason = line[reasonStart.upperBound...].prefix { $0 != "\"" }
            counted[String(reason), default: 0] += Double(line.split(separator: " ").last ?? "0") ?? 0
        }
        let byReason = Dictionary(grouping: ends, by: \.reason.rawValue).mapValues { Double($0.count) }
        if counted.filter({ $0.value > 0 }) != byReason {
            fail("conn_reaper_sockets_destroyed_total says \(counted), the ends were \(byReason)")
        }
    }
}
