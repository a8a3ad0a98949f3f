import OS
import Prometheus
import Reaper

/// Every metric the agent exports, prefixed `conn_reaper_`, base units, `_total` counters.
public final class AgentMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    static func name(_ metric: String, unit: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "conn_reaper", metricName: metric, unitName: unit, helpText: help)
    }
    static let probeBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5),
    ]
    static let reapBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(10),
        .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5),
    ]

    public init() {
        registry.makeGauge(
            descriptor: Self.name("build_info", unit: "", help: "Always 1; the version and revision labels name the running build."),
            labels: [("version", ConnReaperVersion.current), ("revision", ConnReaperVersion.revision)]
        ).set(to: 1)
        // The configuration loaded at start counts as the first successful load.
        recordConfigLoad(successful: true)
    }

    /// What the last configuration load did, with the time of the last one that worked (Prometheus'
    /// own names for these, so the usual alert on them fits).
    func recordConfigLoad(successful: Bool) {
        registry.makeGauge(
            descriptor: Self.name(
                "config_last_reload_successful", unit: "", help: "1 when the last configuration load (start or reload) worked, else 0.")
        )
        .set(to: successful ? 1 : 0)
        guard successful else { return }
        registry.makeGauge(
            descriptor: Self.name(
                "config_last_reload_success_timestamp", unit: "seconds", help: "Unix time of the last configuration load that worked.")
        ).set(to: ProcessStatistics.unixTime())
    }

    func backendUp(pool: String, backend: String) -> Gauge {
        registry.makeGauge(
            descriptor: Self.name(
                "backend_up", unit: "", help: "1 when the backend's probes say up, 0 when they say otherwise; absent until first known."),
            labels: [("pool", pool), ("backend", backend)])
    }

    func forgetBackendUp(pool: String, backend: String) {
        registry.unregisterGauge(backendUp(pool: pool, backend: backend))
    }

    func heartbeatUp(pool: String, backend: String) -> Gauge {
        registry.makeGauge(
            descriptor: Self.name(
                "heartbeat_up", unit: "", help: "1 while the agent's own keepalive connection to the backend is established, else 0."),
            labels: [("pool", pool), ("backend", backend)])
    }

    func forgetHeartbeatUp(pool: String, backend: String) {
        registry.unregisterGauge(heartbeatUp(pool: pool, backend: backend))
    }

    func heartbeatFailures(pool: String, backend: String, cause: HeartbeatRules.Cause) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "heartbeat_failures", unit: "total",
                help: "Heartbeat connections that failed or ended, by cause; only a timeout of an established one is an early signal."),
            labels: [("pool", pool), ("backend", backend), ("cause", cause.rawValue)])
    }

    func probeDuration(pool: String, backend: String) -> DurationHistogram {
        registry.makeDurationHistogram(
            descriptor: Self.name("probe_duration", unit: "seconds", help: "Time each probe took, success or not."),
            labels: [("pool", pool), ("backend", backend)], buckets: Self.probeBuckets)
    }

    func probes(pool: String, backend: String, result: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("probes", unit: "total", help: "Probes run, by result (success, failure)."),
            labels: [("pool", pool), ("backend", backend), ("result", result)])
    }

    func transitions(pool: String, backend: String, to state: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("backend_transitions", unit: "total", help: "Backend state changes, by the state entered."),
            labels: [("pool", pool), ("backend", backend), ("to", state)])
    }

    func socketsDestroyed(pool: String, backend: String, reason: ReapReason) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "sockets_destroyed", unit: "total",
                help: "Sockets ended with SOCK_DESTROY, by reason (dead, still-dead, drain_timeout, unhealthy, stuck, rebalance)."),
            labels: [("pool", pool), ("backend", backend), ("reason", reason.rawValue)])
    }

    func conntrackDeleted(pool: String, backend: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("conntrack_entries_deleted", unit: "total", help: "Conntrack entries deleted."),
            labels: [("pool", pool), ("backend", backend)])
    }

    func destroyErrors(errno: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "destroy_errors", unit: "total", help: "Socket destroys and conntrack deletes the kernel refused, by errno."),
            labels: [("errno", errno)])
    }

    func netlinkErrors(layer: String, operation: String, errno: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "netlink_errors", unit: "total",
                help:
                    "Trouble with sock_diag, ctnetlink or entering a namespace, by layer, request and errno (ENOBUFS: replies or acks lost to a full queue, the step redone; NLM_F_DUMP_INTR: a torn dump redone)."
            ),
            labels: [("layer", layer), ("operation", operation), ("errno", errno)])
    }

    func reapsSuppressed(pool: String, reason: SuppressReason) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "reaps_suppressed", unit: "total",
                help: "Reaps a rule held back, by reason (unhealthy_not_dead, alive_evidence, all_backends_down, budget)."),
            labels: [("pool", pool), ("reason", reason.rawValue)])
    }

    func backendState(pool: String, backend: String, state: BackendState) -> Gauge {
        registry.makeGauge(
            descriptor: Self.name(
                "backend_state", unit: "", help: "1 for the backend's current state (unknown, up, unhealthy, dead), 0 for the others."),
            labels: [("pool", pool), ("backend", backend), ("state", state.rawValue)])
    }

    func reapDuration(pool: String) -> DurationHistogram {
        registry.makeDurationHistogram(
            descriptor: Self.name("reap_duration", unit: "seconds", help: "Time one reap of one backend took in the kernel."),
            labels: [("pool", pool)], buckets: Self.reapBuckets)
    }

    func stuckFound(pool: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "stuck_sockets_found", unit: "total",
                help: "Connections the stuck detector condemned (data unacknowledged, no ACK for stuck_after)."), labels: [("pool", pool)])
    }

    func stuckEnded(pool: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("stuck_sockets_ended", unit: "total", help: "Stuck connections destroyed."), labels: [("pool", pool)])
    }

    func stuckScanDuration(pool: String) -> DurationHistogram {
        registry.makeDurationHistogram(
            descriptor: Self.name(
                "stuck_scan_duration", unit: "seconds", help: "Time one stuck-connection scan (dump with tcp_info, destroys) took."),
            labels: [("pool", pool)], buckets: Self.reapBuckets)
    }

    func earlyProbes(pool: String, backend: String, signal: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "early_probes", unit: "total",
                help: "Probes sent at once because the kernel showed the backend failing, by signal (retransmits)."),
            labels: [("pool", pool), ("backend", backend), ("signal", signal)])
    }

    func returnProbes(pool: String, backend: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "return_probes", unit: "total",
                help: "Probes of a backend found dead by early detection, sent at once and every 100 ms for 5 s to see it answer again."),
            labels: [("pool", pool), ("backend", backend)])
    }

    func conntrackEntries() -> Gauge {
        registry.makeGauge(
            descriptor: Self.name(
                "conntrack_entries", unit: "", help: "Conntrack entries in the agent's own namespace (nf_conntrack_count)."))
    }

    func conntrackLimit() -> Gauge {
        registry.makeGauge(
            descriptor: Self.name("conntrack_entries_limit", unit: "", help: "The conntrack table's limit (nf_conntrack_max)."))
    }

    func conntrackFull() -> Gauge {
        registry.makeGauge(
            descriptor: Self.name(
                "conntrack_table_full", unit: "",
                help: "1 while the conntrack table holds 95% of its limit or more (until below 90%): new flows are being dropped."))
    }

    func backendConnections(pool: String, backend: String) -> Gauge {
        registry.makeGauge(
            descriptor: Self.name(
                "backend_connections", unit: "",
                help: "Established connections toward the backend as the agent's last census saw them (rebalancing pools)."),
            labels: [("pool", pool), ("backend", backend)])
    }

    func rebalanceClosed(pool: String, backend: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name(
                "rebalance_closed", unit: "total", help: "Quiet connections ended on an over-share backend so they reconnect elsewhere."),
            labels: [("pool", pool), ("backend", backend)])
    }

    func configReloads(result: String) -> Counter {
        registry.makeCounter(
            descriptor: Self.name("config_reloads", unit: "total", help: "Configuration reloads, by result (success, failure)."),
            labels: [("result", result)])
    }

    /// The text a scrape gets: the agent's metrics, then the process's own (read from /proc now).
    public func exposition() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self) + Self.processMetrics(ProcessStatistics.current())
    }

    /// The standard process_* metrics every Prometheus client library exports, without a prefix.
    static func processMetrics(_ statistics: ProcessStatistics?) -> String {
        guard let statistics else { return "" }
        var text = ""
        func add(_ name: String, _ type: String, _ help: String, _ value: Double) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        add("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", statistics.cpuSeconds)
        add("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", Double(statistics.residentBytes))
        add("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", statistics.startTime)
        add("process_open_fds", "gauge", "Number of open file descriptors.", Double(statistics.openFileDescriptors))
        add("process_max_fds", "gauge", "Maximum number of open file descriptors.", Double(statistics.maxFileDescriptors))
        return text
    }
}
