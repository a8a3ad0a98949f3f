import Agent
import Reaper
import ArgumentParser
import Health
import Logging
import Netlink
import NetworkAddress
import ServiceLifecycle

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch backend health and reap connections to backends that die.",
        discussion: """
            Backends come from one of: --config FILE (YAML), --backend IP:PORT (repeatable), or \
            --nginx-conf FILE (its upstream blocks, re-read when the file changes). SIGHUP reloads; a \
            configuration that does not load is logged and the running one stays. Exit 2 on an invalid \
            configuration, before anything is reaped.
            """)

    @Option(help: "YAML configuration file.") var config: String?
    @Option(name: .customLong("backend"), help: "A backend IP:PORT to watch (repeatable).") var backends: [String] = []
    @Option(name: .customLong("nginx-conf"), help: "Take backends from this nginx configuration's upstream blocks.") var nginxConf: String?
    @Option(name: .customLong("upstream"), help: "With --nginx-conf: only these upstream blocks (repeatable).") var upstreams: [String] = []

    @Option(help: "Probe type: tcp, http or https.") var probe: ProbeSpec.Kind = .tcp
    @Option(name: .customLong("probe-port"), help: "Probe this port instead of the backend's.") var probePort: UInt16?
    @Option(help: "HTTP(S) probe path.") var path = "/"
    @Option(name: .customLong("expect-status"), help: "HTTP status counted as healthy (repeatable).") var expectStatus: [Int] = []
    @Option(help: "Time between probes of one backend.") var interval = "1s"
    @Option(help: "Probe timeout.") var timeout = "500ms"
    @Option(help: "Consecutive successes to count a backend up.") var rise = 2
    @Option(help: "Consecutive failures to count a backend down.") var fall = 2
    @Option(name: .customLong("protocols"), help: "Flows to reap: tcp, udp or tcp,udp.") var protocols = "tcp"
    @Option(name: .customLong("tls-ca"), help: "https probe: CA file.") var tlsCA: String?
    @Option(name: .customLong("tls-cert"), help: "https probe: client certificate.") var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "https probe: client key.") var tlsKey: String?
    @Option(name: .customLong("tls-server-name"), help: "https probe: SNI and certificate name.") var tlsServerName: String?
    @Flag(name: .customLong("tls-insecure-skip-verify"), help: "https probe: do not verify the certificate.") var tlsInsecure = false
    @Option(help: "Where /metrics, /healthz, /readyz and /status listen (overrides the config file's listen).") var listen: String?
    @Option(name: .customLong("max-sockets-per-second"), help: "Reconnect-storm budget: sockets ended per second on average (default 500).")
    var maxSocketsPerSecond: Int?
    @Option(name: .customLong("max-sockets-burst"), help: "Reconnect-storm budget: sockets ended at once at most (default 5000).")
    var maxSocketsBurst: Int?
    @Option(name: .customLong("reap-on"), help: "Which state ends connections: dead (default) or unhealthy (any failed probes).")
    var reapOn: String?
    @Option(
        name: .customLong("drain-timeout"),
        help: "How long an unhealthy backend keeps its connections before they are closed, paced (0: forever).")
    var drainTimeout: String?
    @Option(
        name: .customLong("netns"),
        help: ArgumentHelp(
            "Reap in this network namespace (/run/netns/NAME, /proc/PID/ns/net) instead of the agent's own, "
                + "or 'all' (repeatable; needs CAP_SYS_ADMIN).")
    )
    var netns: [String] = []
    @Flag(name: .customLong("reap-when-all-down"), help: "Reap even when every backend of a pool looks down.") var reapWhenAllDown = false

    @Flag(name: .customLong("dry-run"), help: "Log what would be reaped; end nothing.") var dryRun = false
    @Option(name: .customLong("log-format"), help: "logfmt or json.") var logFormat: AgentConfiguration.LogFormat?

    func validate() throws {
        let sources = [config != nil, !backends.isEmpty, nginxConf != nil].filter { $0 }.count
        guard sources == 1 else { throw ValidationError("name exactly one of --config, --backend or --nginx-conf") }
        if !netns.isEmpty && config != nil {
            throw ValidationError("--netns goes with --backend or --nginx-conf; in a config file write netns:")
        }
        if !upstreams.isEmpty && nginxConf == nil { throw ValidationError("--upstream goes with --nginx-conf") }
    }

    func run() async throws {
        let source: ConfigSource
        let configuration: AgentConfiguration
        do {
            source = ConfigSource(origin: try origin(), forceDryRun: dryRun, logFormat: logFormat, listen: try listenOverride())
            configuration = try source.load()
        } catch {
            standardError("conn-reaper: invalid configuration: \(error)")
            throw ExitCode(2)
        }
        // The agent needs CAP_NET_ADMIN, CAP_SYS_ADMIN when it enters other network namespaces
        // (`netns:`), CAP_SYS_PTRACE when it finds them through /proc (`all`), and nothing else:
        // whatever else it was started with goes before anything runs (a re-exec; see
        // ProcessCapabilities). The configuration is read first to know which to keep; the new image
        // reads it again. (A reload that adds `netns` later cannot get CAP_SYS_ADMIN back.)
        var kept = [HostCapabilities.netAdmin]
        if configuration.usesOtherNamespaces { kept.append(HostCapabilities.sysAdmin) }
        if configuration.inspectsProcesses { kept.append(HostCapabilities.sysPtrace) }
        var capabilityProblem: SystemCallError?
        do { try ProcessCapabilities.reexecRetaining(Set(kept), marker: "CONN_REAPER_CAPABILITIES_SHED") } catch {
            capabilityProblem = error
        }
        LoggingSystem.bootstrap { label in StructuredLogHandler(label: label, format: configuration.logFormat) }
        let logger = Logger(label: "conn-reaper")
        let metrics = AgentMetrics()
        let state = AgentState(configuration: configuration)
        let store = ConfigStore(configuration)
        let workers = KernelWorkers()
        let executor = ReapExecutor(state: state, kernel: WorkerReapKernel(workers: workers), metrics: metrics, logger: logger)
        let services: [any Service] = [
            workers,
            executor,
            HealthService(store: store, state: state, executor: executor, metrics: metrics, logger: logger),
            ReloadService(source: source, store: store, metrics: metrics, logger: logger),
            StatusServer.make(
                listen: configuration.listen.address.description, port: Int(configuration.listen.port),
                state: state, metrics: metrics, logger: logger),
        ]
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
        if let capabilityProblem {
            logger.warning("capabilities not reduced to what the configuration needs", metadata: ["error": "\(capabilityProblem)"])
        }
        for finding in HostCheck().findings where finding.verdict != .ok {
            // Keep running: probes and metrics still help, and the reap errors will say the same.
            logger.error("host check: \(finding.name)", metadata: ["detail": "\(finding.detail)"])
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.notice("conn-reaper stopped")
    }

    func listenOverride() throws(ConfigurationError) -> Endpoint? {
        guard let listen else { return nil }
        do { return try EndpointParsing.parse(listen) } catch { throw ConfigurationError(key: "--listen", error.message) }
    }

    /// The configuration origin the flags name; flag values are checked the same way YAML's are.
    func origin() throws(ConfigurationError) -> ConfigOrigin {
        if let config { return .yaml(path: config) }
        var settings = AgentConfiguration()
        if let maxSocketsPerSecond {
            guard (1...10_000_000).contains(maxSocketsPerSecond) else {
                throw ConfigurationError(key: "--max-sockets-per-second", "\(maxSocketsPerSecond) is not from 1 to 10000000")
            }
            settings.maxSocketsPerSecond = maxSocketsPerSecond
        }
        if let maxSocketsBurst {
            guard (1...10_000_000).contains(maxSocketsBurst) else {
                throw ConfigurationError(key: "--max-sockets-burst", "\(maxSocketsBurst) is not from 1 to 10000000")
            }
            settings.maxSocketsBurst = maxSocketsBurst
        }
        settings.reapWhenAllDown = reapWhenAllDown
        if netns.contains("all") {
            settings.netns = .all
        } else if !netns.isEmpty {
            for path in netns where !path.hasPrefix("/") {
                throw ConfigurationError(key: "--netns", "'\(path)' is not 'all' or an absolute path (like /run/netns/NAME)")
            }
            settings.netns = .paths(netns)
        }
        var pool = PoolConfiguration(name: "default", backends: [])
        pool.probe = ProbeSpec(
            kind: probe, port: probePort, path: path, expectStatus: expectStatus.isEmpty ? [200] : Set(expectStatus),
            timeout: try duration(timeout, flag: "--timeout"),
            tls: .init(caFile: tlsCA, certificateFile: tlsCert, keyFile: tlsKey, serverName: tlsServerName, insecureSkipVerify: tlsInsecure)
        )
        pool.interval = try duration(interval, flag: "--interval")
        guard (1...100).contains(rise) else { throw ConfigurationError(key: "--rise", "\(rise) is not from 1 to 100") }
        guard (1...100).contains(fall) else { throw ConfigurationError(key: "--fall", "\(fall) is not from 1 to 100") }
        pool.rise = rise
        pool.fall = fall
        if let reapOn {
            guard let value = ReapOn(rawValue: reapOn) else {
                throw ConfigurationError(
                    key: "--reap-on", "'\(reapOn)' is not one of \(ReapOn.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            pool.reapOn = value
        }
        if let drainTimeout { pool.drainTimeout = try duration(drainTimeout, flag: "--drain-timeout") }
        pool.protocols = Set(
            try protocols.split(separator: ",").map { name throws(ConfigurationError) -> TransportProtocol in
                switch name.trimmingPrefix(while: \.isWhitespace) {
                case "tcp": return .tcp
                case "udp": return .udp
                default: throw ConfigurationError(key: "--protocols", "'\(name)' is not tcp or udp")
                }
            })
        if let nginxConf { return .nginx(path: nginxConf, upstreams: upstreams, settings: settings, pool: pool) }
        pool.backends = try backends.map { (text: String) throws(ConfigurationError) -> Endpoint in
            do throws(EndpointParsing.Failure) { return try EndpointParsing.parse(text) } catch {
                throw ConfigurationError(key: "--backend", error.message)
            }
        }
        settings.pools = [pool]
        return .flags(settings)
    }

    func duration(_ text: String, flag: String) throws(ConfigurationError) -> Duration {
        do { return try DurationParsing.parseChecked(text) } catch { throw ConfigurationError(key: flag, error.message) }
    }
}

extension ProbeSpec.Kind: ExpressibleByArgument {}
extension AgentConfiguration.LogFormat: ExpressibleByArgument {}
