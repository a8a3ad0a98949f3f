import Health
import Logging
import NetworkAddress
import ServiceLifecycle

/// Probes every backend of every pool on its own loop and reaps backends that are down. Follows
/// configuration reloads: loops of the old configuration end, new ones start, health carries over.
public struct HealthService: Service {
    let store: ConfigStore
    let state: AgentState
    let reaper: BackendReaper
    let metrics: AgentMetrics
    let logger: Logger

    public init(store: ConfigStore, state: AgentState, reaper: BackendReaper, metrics: AgentMetrics, logger: Logger) {
        self.store = store
        self.state = state
        self.reaper = reaper
        self.metrics = metrics
        self.logger = logger
    }

    /// While a backend is down, its connections are reaped at least this often, so a balancer's
    /// new connect() toward it fails fast instead of waiting out a connect timeout.
    static let downReapCadence: Duration = .milliseconds(100)

    public func run() async throws {
        let updates = await store.updates()
        await cancelWhenGracefulShutdown {
            // One task per configuration generation, always awaited before the next starts and
            // before run returns. (A task group cannot serve: once cancelAll() ran, every task
            // added to it later starts out cancelled.)
            var current: Task<Void, Never>?
            var generation = 0
            for await configuration in updates {
                current?.cancel()
                await current?.value
                generation += 1
                await state.apply(configuration)
                let number = generation
                current = Task { await watch(configuration, generation: number) }
            }
            current?.cancel()
            await current?.value
        }
    }

    func watch(_ configuration: AgentConfiguration, generation: Int) async {
        logger.info("watching backends", metadata: [
            "pools": "\(configuration.pools.count)", "backends": "\(configuration.pools.reduce(0) { $0 + $1.backends.count })",
            "generation": "\(generation)", "dry_run": "\(configuration.dryRun)",
        ])
        await withTaskGroup(of: Void.self) { group in
            for pool in configuration.pools {
                let prober: Prober
                do { prober = try Prober(spec: pool.probe) } catch {
                    logger.error("pool skipped: its probe cannot be built", metadata: ["pool": "\(pool.name)", "error": "\(error)"])
                    continue
                }
                for backend in pool.backends {
                    group.addTask { await watch(backend, in: pool, with: prober) }
                }
            }
        }
    }

    func watch(_ backend: Endpoint, in pool: PoolConfiguration, with prober: Prober) async {
        let label = backend.description
        let up = metrics.backendUp(pool: pool.name, backend: label)
        let duration = metrics.probeDuration(pool: pool.name, backend: label)
        let successes = metrics.probes(pool: pool.name, backend: label, result: "success")
        let failures = metrics.probes(pool: pool.name, backend: label, result: "failure")
        let clock = ContinuousClock()
        // A random start spreads one node's probes, and many nodes' agents, over the interval.
        try? await Task.sleep(for: pool.interval * Double.random(in: 0..<1))
        while !Task.isCancelled {
            let started = clock.now
            let result = await prober.probe(backend)
            guard !Task.isCancelled else { return }
            duration.record(result.duration)
            (result.success ? successes : failures).increment()
            let (health, changed) = await state.record(result, pool: pool.name, backend: backend)
            up.set(to: health == .up ? 1.0 : 0.0)
            if let changed {
                metrics.transitions(pool: pool.name, backend: label, to: changed.rawValue).increment()
                logger.notice("backend \(changed.rawValue)", metadata: [
                    "pool": "\(pool.name)", "backend": "\(label)", "probe": "\(result.detail)",
                    "probe_ms": "\((result.duration.seconds * 1_000_000).rounded() / 1000)",
                ])
            }
            let next = started + pool.interval * Double.random(in: 0.9...1.1)
            guard health == .down else {
                try? await Task.sleep(until: next, clock: clock)
                continue
            }
            await reaper.reap(pool: pool, backend: backend, reason: changed == .down ? .down : .stillDown)
            while clock.now + Self.downReapCadence < next, !Task.isCancelled {
                try? await Task.sleep(for: Self.downReapCadence)
                await reaper.reap(pool: pool, backend: backend, reason: .stillDown)
            }
            try? await Task.sleep(until: next, clock: clock)
        }
    }
}
