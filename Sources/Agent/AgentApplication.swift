import Logging
import Reaper
import ServiceLifecycle
import OS

/// The agent, composed: its state, the kernel workers, the reap pipeline, probes, reloads and the
/// HTTP endpoints, each a Service in one ServiceGroup that SIGTERM and SIGINT stop gracefully. The
/// executable parses flags, loads the configuration and calls `run()`.
public struct AgentApplication {
    public let source: ConfigSource
    public let configuration: AgentConfiguration
    public let logger: Logger
    /// What /status shows; tests read it too.
    public let state: AgentState
    public let metrics = AgentMetrics()
    let reloadPoll: Duration
    let logLevel: LogLevelControl
    let serviceManager: ServiceManagerLink
    let watchdogInterval: Duration?

    public init(
        source: ConfigSource, configuration: AgentConfiguration, logger: Logger, reloadPoll: Duration = .seconds(1),
        logLevel: LogLevelControl = LogLevelControl(), notifier: ServiceManagerNotifier? = nil, watchdogInterval: Duration? = nil
    ) {
        self.source = source
        self.configuration = configuration
        self.logger = logger
        self.state = AgentState(configuration: configuration)
        self.reloadPoll = reloadPoll
        self.logLevel = logLevel
        self.serviceManager = ServiceManagerLink(notifier: notifier, logger: logger)
        self.watchdogInterval = watchdogInterval
    }

    /// The services, in the order they start (and the reverse of the order they stop): the kernel
    /// workers first, so they stop last, once nothing can ask them for anything; the service
    /// manager's link last, so STOPPING=1 goes out first.
    public func services() -> [any Service] {
        let store = ConfigStore(configuration)
        let workers = KernelWorkers()
        let executor = ReapExecutor(state: state, kernel: WorkerReapKernel(workers: workers), metrics: metrics, logger: logger)
        return [
            workers,
            executor,
            HealthService(store: store, state: state, executor: executor, metrics: metrics, logger: logger),
            LinkSignalService(state: state, executor: executor, logger: logger),
            HeartbeatService(state: state, executor: executor, metrics: metrics, logger: logger),
            ConntrackTableWatch(executor: executor, metrics: metrics, logger: logger),
            ReloadService(
                source: source, store: store, metrics: metrics, logger: logger, pollInterval: reloadPoll, logLevel: logLevel,
                serviceManager: serviceManager),
            StatusServer.make(
                listen: configuration.listen.address.description, port: Int(configuration.listen.port),
                state: state, metrics: metrics, logger: logger
            ) { [serviceManager, configuration] in
                serviceManager.ready(status: "watching \(configuration.pools.reduce(0) { $0 + $1.backends.count }) backends")
            },
            ServiceManagerService(link: serviceManager, watchdogInterval: watchdogInterval) { await workers.own.roundTrip() },
        ]
    }

    public func run() async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: services().map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        logger.notice(
            "conn-reaper starting",
            metadata: [
                "version": "\(ConnReaperVersion.current)", "listen": "\(configuration.listen)",
                "pools": "\(configuration.pools.map(\.name).joined(separator: ","))", "dry_run": "\(configuration.dryRun)",
            ])
        if let held = try? ProcessCapabilities.current() {
            logger.info(
                "capabilities",
                metadata: [
                    "effective": "0x\(String(held.effective, radix: 16))", "net_admin": "\(held.effective & (1 << 12) != 0)",
                    "sys_admin": "\(held.effective & (1 << 21) != 0)",
                ])
        }
        for finding in HostCheck().findings where finding.verdict != .ok {
            // Keep running: probes and metrics still help, and the reap errors will say the same.
            logger.error("host check: \(finding.name)", metadata: ["detail": "\(finding.detail)"])
        }
        try await group.run()
        logger.notice("conn-reaper stopped")
    }

    /// The capabilities this configuration needs and nothing else: CAP_NET_ADMIN, CAP_SYS_ADMIN when
    /// it enters other network namespaces (`netns:`), CAP_SYS_PTRACE when it finds them through /proc
    /// (`all`). Whatever else the process was started with goes before anything runs (a re-exec;
    /// see ProcessCapabilities); the new image reads the configuration again. (A reload that adds
    /// `netns` later cannot get CAP_SYS_ADMIN back.)
    public static func shedCapabilities(for configuration: AgentConfiguration) throws(SystemCallError) {
        var kept = [HostCapabilities.netAdmin]
        if configuration.usesOtherNamespaces { kept.append(HostCapabilities.sysAdmin) }
        if configuration.inspectsProcesses { kept.append(HostCapabilities.sysPtrace) }
        try ProcessCapabilities.reexecRetaining(Set(kept), marker: "CONN_REAPER_CAPABILITIES_SHED")
    }
}
