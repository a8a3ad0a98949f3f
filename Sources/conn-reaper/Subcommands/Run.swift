import Agent
import ArgumentParser
import Health
import Logging
import NetworkAddress
import OS

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
    @Flag(
        name: .customLong("rebalance"),
        help: "When a backend returns, move its fair share of long-lived connections back to it, paced (off by default).")
    var rebalance = false
    @Option(
        name: .customLong("rebalance-tolerance"),
        help: "With --rebalance: no action while every backend is within this of its fair share (default 20%; 1-100%).")
    var rebalanceTolerance: String?
    @Option(
        name: .customLong("rebalance-rate"),
        help: "With --rebalance: closes per second on this node (default: 1% of the pool's connections, 1.5 to 5).")
    var rebalanceRate: String?
    @Option(
        name: .customLong("rebalance-owner"),
        help: "With --rebalance: whose connections it moves: auto (the balancer's, by default), uid:N, or any.")
    var rebalanceOwner: String?
    @Option(
        name: .customLong("netns"),
        help: ArgumentHelp(
            "Reap in this network namespace (a NAME under /run/netns, or a file like /proc/PID/ns/net) instead of the agent's own, "
                + "or 'all' (repeatable; needs CAP_SYS_ADMIN).")
    )
    var netns: [String] = []
    @Flag(name: .customLong("reap-when-all-down"), help: "Reap even when every backend of a pool looks down.") var reapWhenAllDown = false

    @Flag(name: .customLong("dry-run"), help: "Log what would be reaped; end nothing.") var dryRun = false
    @Option(name: .customLong("log-format"), help: "logfmt or json.") var logFormat: AgentConfiguration.LogFormat?
    @Option(
        name: .customLong("log-level"),
        help: "Least severe level logged: trace, debug, info (default), notice, warning, error or critical.")
    var logLevel: String?

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
            source = ConfigSource(
                origin: try origin(), forceDryRun: dryRun, logFormat: logFormat, logLevel: try levelOverride(), listen: try listenOverride()
            )
            configuration = try source.load()
        } catch {
            standardError("conn-reaper: invalid configuration: \(error)")
            throw ExitCode(2)
        }
        var capabilityProblem: SystemCallError?
        do { try AgentApplication.shedCapabilities(for: configuration) } catch { capabilityProblem = error }
        let level = LogLevelControl(configuration.logLevel)
        LoggingSystem.bootstrap { label in StructuredLogHandler(label: label, format: configuration.logFormat, level: level) }
        let logger = Logger(label: "conn-reaper")
        if let capabilityProblem {
            logger.warning("capabilities not reduced to what the configuration needs", metadata: ["error": "\(capabilityProblem)"])
        }
        var notifier: ServiceManagerNotifier?
        do { notifier = try ServiceManagerNotifier.fromEnvironment() } catch {
            logger.warning("NOTIFY_SOCKET cannot be used: systemd is not told when the agent is ready", metadata: ["error": "\(error)"])
        }
        try await AgentApplication(
            source: source, configuration: configuration, logger: logger, logLevel: level, notifier: notifier,
            watchdogInterval: ServiceManagerNotifier.watchdogInterval()
        ).run()
    }

    func levelOverride() throws(ConfigurationError) -> Logger.Level? {
        guard let logLevel else { return nil }
        return try flag("--log-level") { () throws(ConfigValue.Failure) in try ConfigValue.choice(logLevel, of: Logger.Level.self) }
    }

    func listenOverride() throws(ConfigurationError) -> Endpoint? {
        guard let listen else { return nil }
        return try flag("--listen") { () throws(ConfigValue.Failure) in try ConfigValue.endpoint(listen) }
    }

    /// The configuration origin the flags name, each value through the parser its YAML key uses.
    func origin() throws(ConfigurationError) -> ConfigOrigin {
        if let config { return .yaml(path: config) }
        var settings = AgentConfiguration()
        if let maxSocketsPerSecond {
            settings.maxSocketsPerSecond = try flag("--max-sockets-per-second") { () throws(ConfigValue.Failure) in
                try ConfigValue.int(maxSocketsPerSecond, in: 1...10_000_000)
            }
        }
        if let maxSocketsBurst {
            settings.maxSocketsBurst = try flag("--max-sockets-burst") { () throws(ConfigValue.Failure) in
                try ConfigValue.int(maxSocketsBurst, in: 1...10_000_000)
            }
        }
        settings.reapWhenAllDown = reapWhenAllDown
        if !netns.isEmpty { settings.netns = try flag("--netns") { () throws(ConfigValue.Failure) in try ConfigValue.namespaces(netns) } }
        var pool = PoolConfiguration(name: "default", backends: [])
        pool.probe = ProbeSpec(
            kind: probe, port: probePort, path: path, expectStatus: expectStatus.isEmpty ? [200] : Set(expectStatus),
            timeout: try flag("--timeout") { () throws(ConfigValue.Failure) in try ConfigValue.duration(timeout) },
            tls: .init(caFile: tlsCA, certificateFile: tlsCert, keyFile: tlsKey, serverName: tlsServerName, insecureSkipVerify: tlsInsecure)
        )
        pool.interval = try flag("--interval") { () throws(ConfigValue.Failure) in try ConfigValue.duration(interval) }
        pool.rise = try flag("--rise") { () throws(ConfigValue.Failure) in try ConfigValue.int(rise, in: 1...100) }
        pool.fall = try flag("--fall") { () throws(ConfigValue.Failure) in try ConfigValue.int(fall, in: 1...100) }
        if let reapOn { pool.reapOn = try flag("--reap-on") { () throws(ConfigValue.Failure) in try ConfigValue.choice(reapOn) } }
        if let drainTimeout {
            pool.drainTimeout = try flag("--drain-timeout") { () throws(ConfigValue.Failure) in try ConfigValue.duration(drainTimeout) }
        }
        pool.rebalance = rebalance
        if let rebalanceTolerance {
            pool.rebalanceTolerance = try flag("--rebalance-tolerance") { () throws(ConfigValue.Failure) in
                try ConfigValue.percent(rebalanceTolerance, in: 1...100)
            }
        }
        if let rebalanceRate {
            pool.rebalanceRate = try flag("--rebalance-rate") { () throws(ConfigValue.Failure) in
                try ConfigValue.rate(rebalanceRate, maximum: 1000)
            }
        }
        if let rebalanceOwner {
            pool.rebalanceOwner = try flag("--rebalance-owner") { () throws(ConfigValue.Failure) in
                try RebalanceOwner(parsing: rebalanceOwner)
            }
        }
        pool.protocols = try flag("--protocols") { () throws(ConfigValue.Failure) in
            try ConfigValue.transports(protocols.split(separator: ",").map(String.init))
        }
        if let nginxConf { return .nginx(path: nginxConf, upstreams: upstreams, settings: settings, pool: pool) }
        for text in backends {
            pool.backends.append(try flag("--backend") { () throws(ConfigValue.Failure) in try ConfigValue.endpoint(text) })
        }
        settings.pools = [pool]
        return .flags(settings)
    }

    /// One flag's value through its parser; a failure names the flag.
    func flag<Value>(_ name: String, _ parse: () throws(ConfigValue.Failure) -> Value) throws(ConfigurationError) -> Value {
        do { return try parse() } catch { throw ConfigurationError(key: name, error.message) }
    }
}

extension ProbeSpec.Kind: ExpressibleByArgument {}
extension AgentConfiguration.LogFormat: ExpressibleByArgument {}
