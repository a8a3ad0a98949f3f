import Logging
import Synchronization
import Health
import NetworkAddress
import OS

/// Where the configuration comes from, so a reload reads the same place again, and the
/// command-line overrides that apply on top of every load.
public struct ConfigSource: Sendable {
    public var origin: ConfigOrigin
    public var forceDryRun = false
    public var logFormat: AgentConfiguration.LogFormat?
    /// `--log-level` beats the file's `log_level`.
    public var logLevel: Logger.Level?
    /// `--listen` beats the file's `listen` (a DaemonSet binds the node IP from the downward API).
    public var listen: Endpoint?

    public init(
        origin: ConfigOrigin, forceDryRun: Bool = false, logFormat: AgentConfiguration.LogFormat? = nil,
        logLevel: Logger.Level? = nil, listen: Endpoint? = nil
    ) {
        self.origin = origin
        self.forceDryRun = forceDryRun
        self.logFormat = logFormat
        self.logLevel = logLevel
        self.listen = listen
    }

    public func load(readFile: (String) -> String? = FileStatus.readText) throws(ConfigurationError) -> AgentConfiguration {
        var configuration = try origin.load(readFile: readFile)
        if forceDryRun { configuration.dryRun = true }
        if let logFormat { configuration.logFormat = logFormat }
        if let logLevel { configuration.logLevel = logLevel }
        if let listen { configuration.listen = listen }
        return configuration
    }

    public var watchedFiles: [String] { origin.watchedFiles }
}

public enum ConfigOrigin: Sendable {
    case yaml(path: String)
    /// `--backend` flags: fixed for the life of the process.
    case flags(AgentConfiguration)
    /// Backends from nginx's upstream blocks; the rest from `settings`.
    case nginx(path: String, upstreams: [String], settings: AgentConfiguration, pool: PoolConfiguration)

    /// The reason a file read gave nothing, asked of the file system again to name it.
    static func whyUnreadable(_ path: String) -> String {
        if case .failure(let failure) = FileStatus.read(path) { return failure.description }
        return "cannot be read"
    }

    public func load(readFile: (String) -> String? = FileStatus.readText) throws(ConfigurationError) -> AgentConfiguration {
        switch self {
        case .yaml(let path):
            guard let text = readFile(path) else {
                throw ConfigurationError(key: "", "the configuration file \(Self.whyUnreadable(path))", file: path)
            }
            let configuration = try YAMLConfigReader.configuration(yaml: text, file: path)
            try Self.checkTLS(configuration, file: path)
            return configuration
        case .flags(let configuration):
            try ConfigurationValidator.validate(configuration, file: nil)
            try Self.checkTLS(configuration, file: nil)
            return configuration
        case .nginx(let path, let names, let settings, let template):
            let upstreams = try NginxUpstreams.upstreams(in: NginxConfigParser.parse(path: path, readFile: readFile))
            let wanted =
                names.isEmpty
                ? upstreams
                : try names.map { name throws(ConfigurationError) in
                    guard let upstream = upstreams.first(where: { $0.name == name }) else {
                        let known = upstreams.map(\.name).joined(separator: ", ")
                        throw ConfigurationError(
                            key: "--upstream", "'\(name)' is not an upstream in \(path) (found: \(known.isEmpty ? "none" : known))")
                    }
                    return upstream
                }
            var configuration = settings
            configuration.pools = wanted.filter { !$0.activeEndpoints.isEmpty }.map { upstream in
                var pool = template
                pool.name = upstream.name
                pool.backends = upstream.activeEndpoints
                return pool
            }
            guard !configuration.pools.isEmpty else {
                throw ConfigurationError(key: "upstream", "no upstream with a usable server found", file: path)
            }
            try ConfigurationValidator.validate(configuration, file: path)
            try Self.checkTLS(configuration, file: path)
            return configuration
        }
    }

    /// Files whose change triggers a reload (nginx.conf and everything it includes).
    public var watchedFiles: [String] {
        switch self {
        case .yaml(let path): [path]
        case .flags: []
        case .nginx(let path, _, _, _): NginxConfigParser.files(path: path)
        }
    }

    /// A certificate or key that does not parse is a configuration error, found at load, not at the first probe.
    static func checkTLS(_ configuration: AgentConfiguration, file: String?) throws(ConfigurationError) {
        for (index, pool) in configuration.pools.enumerated() where pool.probe.kind == .https {
            do { _ = try Prober.makeTLSContext(pool.probe.tls) } catch {
                throw ConfigurationError(key: "pools[\(index)].probe.tls", "unusable: \(error)", file: file)
            }
        }
    }
}

/// The configuration in force, and a stream of every later one for the services that follow it.
/// A lock rather than an actor: a stream that ends removes itself at once, not from a stray Task.
public final class ConfigStore: Sendable {
    private struct Contents {
        var current: AgentConfiguration
        var continuations: [Int: AsyncStream<AgentConfiguration>.Continuation] = [:]
        var nextID = 0
    }
    private let contents: Mutex<Contents>

    public init(_ configuration: AgentConfiguration) {
        contents = Mutex(Contents(current: configuration))
    }

    public var current: AgentConfiguration { contents.withLock { $0.current } }

    /// The current configuration first, then each replacement.
    public func updates() -> AsyncStream<AgentConfiguration> {
        let (stream, continuation) = AsyncStream.makeStream(of: AgentConfiguration.self, bufferingPolicy: .bufferingNewest(1))
        let id = contents.withLock { contents in
            continuation.yield(contents.current)
            defer { contents.nextID += 1 }
            contents.continuations[contents.nextID] = continuation
            return contents.nextID
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.contents.withLock { $0.continuations.removeValue(forKey: id) }
        }
        return stream
    }

    public func replace(with configuration: AgentConfiguration) {
        contents.withLock { contents in
            contents.current = configuration
            for continuation in contents.continuations.values { continuation.yield(configuration) }
        }
    }
}
