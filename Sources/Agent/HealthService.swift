import Durations
import Health
import Logging
import NIOCore
import NIOPosix
import NetworkAddress
import ServiceLifecycle
import Synchronization

/// Probes every backend of every pool and hands each result to the reap pipeline. tcp probes and
/// fresh-connection http ones run on the TCPProbeEngine's thread, https ones and http ones with
/// `probe.reuse` on event loops (see BackendProbeLoop). Follows configuration reloads: the old generation's loops
/// stop, a new one starts, states carry over; each generation is a child task of `run`.
public struct HealthService: Service {
    let store: ConfigStore
    let state: AgentState
    let executor: ReapExecutor
    let metrics: AgentMetrics
    let logger: Logger
    let group: any EventLoopGroup
    /// tcp probes and fresh-connection http ones run here; nil if its thread could not start (then
    /// they run on the event loops).
    let tcpEngine: TCPProbeEngine?

    public init(
        store: ConfigStore, state: AgentState, executor: ReapExecutor, metrics: AgentMetrics, logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.store = store
        self.state = state
        self.executor = executor
        self.metrics = metrics
        self.logger = logger
        self.group = group
        do {
            tcpEngine = try TCPProbeEngine { [logger] error in
                logger.critical("tcp and http probes stopped: their thread's loop failed", metadata: ["error": "\(error)"])
            }
        } catch {
            logger.warning("tcp probes run on the event loops: their own thread did not start", metadata: ["error": "\(error)"])
            tcpEngine = nil
        }
    }

    public func run() async throws {
        defer { tcpEngine?.shutdown() }
        let updates = store.updates()
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { generations in
                var supersede: AsyncStream<Void>.Continuation?
                var number = 0
                for await configuration in updates {
                    // The old generation's loops stop before the new one's start: never two probes
                    // of one backend racing to tell the policy different things.
                    if let previous = supersede {
                        previous.finish()
                        await generations.next()
                    }
                    number += 1
                    executor.apply(configuration)
                    let (superseded, continuation) = AsyncStream.makeStream(of: Void.self)
                    supersede = continuation
                    generations.addTask { [number] in await runGeneration(configuration, number: number, until: superseded) }
                }
                supersede?.finish()
            }
        }
    }

    /// One configuration's probe loops, from its start until the next one replaces it or the
    /// service is cancelled (an AsyncStream's iteration ends on either).
    func runGeneration(_ configuration: AgentConfiguration, number: Int, until superseded: AsyncStream<Void>) async {
        let loops = start(configuration, number: number)
        for await _ in superseded {}
        for loop in loops { loop.stop() }
    }

    /// The probe loops of one configuration.
    func start(_ configuration: AgentConfiguration, number: Int) -> [any ProbeLoop] {
        logger.info(
            "watching backends",
            metadata: [
                "pools": "\(configuration.pools.count)", "backends": "\(configuration.pools.reduce(0) { $0 + $1.backends.count })",
                "generation": "\(number)", "dry_run": "\(configuration.dryRun)",
            ])
        var loops: [any ProbeLoop] = []
        var probers: [String: ReapExecutor.PoolProber] = [:]
        for pool in configuration.pools {
            let prober: Prober
            do { prober = try Prober(spec: pool.probe) } catch {
                logger.error("pool skipped: its probe cannot be built", metadata: ["pool": "\(pool.name)", "error": "\(error)"])
                continue
            }
            var poolLoops: [Endpoint: any ProbeLoop] = [:]
            for backend in pool.backends {
                let onResult = recorder(pool: pool, backend: backend)
                let loop: any ProbeLoop =
                    if pool.probe.runsOnEngine, let tcpEngine {
                        EngineProbeLoop(engine: tcpEngine, prober: prober, backend: backend, interval: pool.interval, onResult: onResult)
                    } else {
                        BackendProbeLoop(loop: group.next(), prober: prober, backend: backend, interval: pool.interval, onResult: onResult)
                    }
                loops.append(loop)
                poolLoops[backend] = loop
            }
            let byBackend = poolLoops
            probers[pool.name] = { backends, timeout in
                await withTaskGroup(of: Void.self) { probes in
                    for backend in backends {
                        if let loop = byBackend[backend] { probes.addTask { await loop.probeNow(timeout: timeout) } }
                    }
                }
            }
            if pool.stuckAfter > .zero, pool.protocols.contains(.tcp) {
                logger.info(
                    "stuck-connection detector on",
                    metadata: [
                        "pool": "\(pool.name)", "stuck_after": "\(DurationParsing.format(pool.stuckAfter))",
                        "scan_every": "\(DurationParsing.format(ReapPolicy.PoolRules.stuckPeriod(for: pool.stuckAfter)))",
                    ])
            }
        }
        executor.setProbers(probers)
        for loop in loops { loop.start() }
        return loops
    }

    /// What happens with each probe result, on the event loop that produced it.
    func recorder(pool: PoolConfiguration, backend: Endpoint) -> @Sendable (ProbeResult) -> Void {
        let label = backend.description
        let key = BackendKey(pool: pool.name, backend: backend)
        let duration = metrics.probeDuration(pool: pool.name, backend: label)
        let successes = metrics.probes(pool: pool.name, backend: label, result: "success")
        let failures = metrics.probes(pool: pool.name, backend: label, result: "failure")
        // A health port that refuses or stays silent says nothing of the service port: ask it first.
        let servicePort: Endpoint? = pool.probe.port.flatMap { $0 == backend.port ? nil : backend }
        let engine = tcpEngine
        let timeout = pool.probe.timeout
        return { [executor, logger] result in
            if let servicePort, let engine, result.failure?.nothingAnswered == true {
                Task {
                    let service = await engine.probe(servicePort, check: .connect, timeout: timeout)
                    executor.submit(.probed(key, result.withServicePort(service), at: .now))
                }
                duration.record(result.duration)
                failures.increment()
                return
            }
            duration.record(result.duration)
            (result.success ? successes : failures).increment()
            if let failure = result.failure {
                logger.debug(
                    "probe failed",
                    metadata: [
                        "pool": "\(pool.name)", "backend": "\(label)", "failure": "\(failure.rawValue)", "probe": "\(result.detail)",
                    ])
            }
            executor.submit(.probed(key, result, at: .now))
        }
    }
}
