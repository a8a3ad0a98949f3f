import Logging
import ServiceLifecycle
import UnixSignals
import OS

/// Reloads the configuration on SIGHUP and when a watched file (nginx.conf and its includes)
/// changes. A configuration that does not load is logged and the old one keeps running.
public struct ReloadService: Service {
    let source: ConfigSource
    let store: ConfigStore
    let metrics: AgentMetrics
    let logger: Logger
    let pollInterval: Duration
    let logLevel: LogLevelControl
    let serviceManager: ServiceManagerLink?

    public init(
        source: ConfigSource, store: ConfigStore, metrics: AgentMetrics, logger: Logger, pollInterval: Duration = .seconds(1),
        logLevel: LogLevelControl = LogLevelControl(), serviceManager: ServiceManagerLink? = nil
    ) {
        self.source = source
        self.store = store
        self.metrics = metrics
        self.logger = logger
        self.pollInterval = pollInterval
        self.logLevel = logLevel
        self.serviceManager = serviceManager
    }

    public func run() async throws {
        // Loading reads files (nginx.conf and its includes, certificates) and resolves nginx's
        // server names, and the watch stats files every `pollInterval`: calls that can block, made
        // on a thread of the service's own rather than on the cooperative pool.
        let files = try? NamespaceThread(entering: nil)
        defer { files?.stop() }
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in hangups { await reload(trigger: "SIGHUP", on: files) }
                }
                group.addTask { await watchFiles(on: files) }
            }
        }
    }

    func watchFiles(on thread: NamespaceThread?) async {
        let source = source
        var files = await Self.offPool(thread) { source.watchedFiles }
        guard !files.isEmpty else { return }
        var stamps = await Self.offPool(thread) { [files] in files.map(FileStatus.modificationStamp) }
        while !Task.isCancelled {
            try? await Task.sleep(for: pollInterval)
            let now = await Self.offPool(thread) { [files] in files.map(FileStatus.modificationStamp) }
            guard now != stamps else { continue }
            await reload(trigger: "file changed", on: thread)
            (files, stamps) = await Self.offPool(thread) {
                let files = source.watchedFiles  // an edit may add or drop includes
                return (files, files.map(FileStatus.modificationStamp))
            }
        }
    }

    func reload(trigger: String, on thread: NamespaceThread?) async {
        // The agent is on its way out: a reload now would only start probe loops that stop at once.
        guard serviceManager?.isStopping != true else { return }
        serviceManager?.reloading()
        let source = source
        let loaded = await Self.offPool(thread) { Result { () throws(ConfigurationError) in try source.load() } }
        do {
            let configuration = try loaded.get()
            let old = store.current
            if configuration.listen != old.listen {
                logger.warning("listen address changes take effect at restart", metadata: ["listen": "\(old.listen)"])
            }
            logLevel.current = configuration.logLevel
            store.replace(with: configuration)
            metrics.configReloads(result: "success").increment()
            metrics.recordConfigLoad(successful: true)
            logger.notice("configuration reloaded", metadata: ["trigger": "\(trigger)", "pools": "\(configuration.pools.count)"])
            serviceManager?.ready(status: "configuration reloaded (\(trigger))")
        } catch {
            metrics.configReloads(result: "failure").increment()
            metrics.recordConfigLoad(successful: false)
            logger.error("configuration not reloaded: the running one stays", metadata: ["trigger": "\(trigger)", "error": "\(error)"])
            serviceManager?.ready(status: "configuration not reloaded: \(error)")
        }
    }

    /// `body` on `thread`, or in place without one (none could be made).
    private static func offPool<Value: Sendable>(_ thread: NamespaceThread?, _ body: @escaping @Sendable () -> Value) async -> Value {
        guard let thread else { return body() }
        return await thread.runOrInPlace(body)
    }
}
