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
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in hangups { reload(trigger: "SIGHUP") }
                }
                group.addTask { await watchFiles() }
            }
        }
    }

    func watchFiles() async {
        var files = source.watchedFiles
        guard !files.isEmpty else { return }
        var stamps = files.map(FileStatus.modificationStamp)
        while !Task.isCancelled {
            try? await Task.sleep(for: pollInterval)
            let now = files.map(FileStatus.modificationStamp)
            guard now != stamps else { continue }
            reload(trigger: "file changed")
            files = source.watchedFiles  // an edit may add or drop includes
            stamps = files.map(FileStatus.modificationStamp)
        }
    }

    func reload(trigger: String) {
        // The agent is on its way out: a reload now would only start probe loops that stop at once.
        guard serviceManager?.isStopping != true else { return }
        serviceManager?.reloading()
        do {
            let configuration = try source.load()
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
}
