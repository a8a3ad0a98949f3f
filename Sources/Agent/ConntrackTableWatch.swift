import Logging
import OS
import ServiceLifecycle

/// Reads how many conntrack entries the agent's own namespace holds against the limit, four times a
/// second (two small procfs reads): gauges, a log line when the table fills and when it drains (see `ConntrackFill`), and
/// the news to the policy, which then lets no failed probe make a backend dead.
/// Where conntrack is not loaded the files do not exist and the watch ends at once.
public struct ConntrackTableWatch: Service {
    let executor: ReapExecutor
    let metrics: AgentMetrics
    let logger: Logger
    let interval: Duration

    static let countFile = "/proc/sys/net/netfilter/nf_conntrack_count"
    static let limitFile = "/proc/sys/net/netfilter/nf_conntrack_max"

    public init(executor: ReapExecutor, metrics: AgentMetrics, logger: Logger, interval: Duration = .milliseconds(250)) {
        self.executor = executor
        self.metrics = metrics
        self.logger = logger
        self.interval = interval
    }

    /// Whether the table holds `ConntrackFill.fullShare` of its limit right now.
    static func isFullNow() async -> Bool {
        guard let (entries, limit) = await reading() else { return false }
        return ConntrackFill.isFull(entries: entries, limit: limit)
    }

    /// The two files, read on `reader`: a file read does not hold a thread of the cooperative pool.
    static func reading() async -> (entries: Int, limit: Int)? {
        guard let reader else { return readingInPlace() }
        return await reader.runOrInPlace(readingInPlace)
    }

    /// Made on first use, by a task of the agent (whose threads stay in its own namespace, the one
    /// /proc/sys/net shows the reading thread), and kept for the process's life. Nil: no thread,
    /// the files are read in place, as before.
    private static let reader = try? NamespaceThread(entering: nil)

    private static func readingInPlace() -> (entries: Int, limit: Int)? {
        func number(_ path: String) -> Int? {
            FileStatus.readText(path).flatMap { Int($0.filter(\.isNumber)) }
        }
        guard let entries = number(countFile), let limit = number(limitFile) else { return nil }
        return (entries, limit)
    }

    public func run() async throws {
        guard await Self.reading() != nil else { return }
        await cancelWhenGracefulShutdown {
            var fill = ConntrackFill()
            while !Task.isCancelled {
                if let (entries, limit) = await Self.reading() {
                    metrics.conntrackEntries().set(to: Double(entries))
                    metrics.conntrackLimit().set(to: Double(limit))
                    switch fill.observe(entries: entries, limit: limit) {
                    case .becameFull(let entries, let limit)?:
                        logger.error(
                            "conntrack table full: the kernel drops new flows, so failed probes make no backend dead until it drains",
                            metadata: ["entries": "\(entries)", "limit": "\(limit)", "sysctl": "net.netfilter.nf_conntrack_max"])
                    case .noLongerFull(let entries, let limit)?:
                        logger.notice("conntrack table no longer full", metadata: ["entries": "\(entries)", "limit": "\(limit)"])
                    case nil:
                        break
                    }
                    metrics.conntrackFull().set(to: fill.full ? 1 : 0)
                    // Every look, not only on a change: the evidence step may have said full first.
                    executor.submit(.conntrackTable(full: fill.full))
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}
