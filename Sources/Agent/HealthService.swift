import Health
import Logging
import NIOCore
import NIOPosix
import NetworkAddress
import ServiceLifecycle
import Synchronization

/// Probes every backend of every pool and reaps backends that are down. Probing runs on event
/// loops (see BackendProbeLoop); a backend that goes down gets a reaping task that ends its
/// connections at once and again every 100 ms while it stays down. Follows configuration reloads:
/// the old generation stops, a new one starts, health carries over.
public struct HealthService: Service {
    let store: ConfigStore
    let state: AgentState
    let reaper: BackendReaper
    let workers: KernelWorkers
    let metrics: AgentMetrics
    let logger: Logger
    let group: any EventLoopGroup

    public init(
        store: ConfigStore, state: AgentState, reaper: BackendReaper, workers: KernelWorkers, metrics: AgentMetrics, logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.store = store
        self.state = state
        self.reaper = reaper
        self.workers = workers
        self.metrics = metrics
        self.logger = logger
        self.group = group
    }

    /// While a backend is down, its connections are reaped this often (start to start), so a
    /// balancer's new connect() toward it (SYN_SENT) fails fast instead of waiting out a connect timeout.
    static let downReapCadence: Duration = .milliseconds(100)
    /// Right after the first reap, balancers reconnect at once and a least-connections one picks the
    /// now-empty dead backend first: quick follow-ups abort those connects before the cadence would.
    static let followUpReaps: [Duration] = [.milliseconds(20), .milliseconds(50)]

    struct DownBackend: Sendable {
        var pool: PoolConfiguration
        var backend: Endpoint
        var reason: BackendReaper.Reason
    }

    public func run() async throws {
        let updates = await store.updates()
        await cancelWhenGracefulShutdown {
            var generation: Generation?
            var number = 0
            for await configuration in updates {
                await generation?.stop()
                number += 1
                state.apply(configuration)
                generation = start(configuration, number: number)
            }
            await generation?.stop()
        }
    }

    /// The probe loops and the reaping task of one configuration.
    final class Generation: Sendable {
        let loops: [BackendProbeLoop]
        let downEvents: AsyncStream<DownBackend>.Continuation
        let reaping: Task<Void, Never>

        init(loops: [BackendProbeLoop], downEvents: AsyncStream<DownBackend>.Continuation, reaping: Task<Void, Never>) {
            self.loops = loops
            self.downEvents = downEvents
            self.reaping = reaping
        }

        func stop() async {
            for loop in loops { loop.stop() }
            downEvents.finish()
            reaping.cancel()
            await reaping.value
        }
    }

    func start(_ configuration: AgentConfiguration, number: Int) -> Generation {
        logger.info("watching backends", metadata: [
            "pools": "\(configuration.pools.count)", "backends": "\(configuration.pools.reduce(0) { $0 + $1.backends.count })",
            "generation": "\(number)", "dry_run": "\(configuration.dryRun)",
        ])
        let (events, downEvents) = AsyncStream.makeStream(of: DownBackend.self)
        let loopsByPool = Mutex<[String: [BackendProbeLoop]]>([:])
        // Bounded by Generation.stop(), which cancels and awaits it.
        let reaping = Task { [self] in
            await withTaskGroup(of: Void.self) { tasks in
                for pool in configuration.pools where pool.stuckAfter > .zero && pool.protocols.contains(.tcp) {
                    tasks.addTask {
                        await StuckScanner(pool: pool, workers: workers, state: state, metrics: metrics, logger: logger).run()
                    }
                }
                for await event in events {
                    let others = loopsByPool.withLock { $0[event.pool.name] ?? [] }.filter { $0.backend != event.backend }
                    tasks.addTask {
                        await reapWhileDown(event) {
                            await withTaskGroup(of: Void.self) { probes in
                                for other in others { probes.addTask { await other.probeNow() } }
                            }
                        }
                    }
                }
            }
        }
        var loops: [BackendProbeLoop] = []
        for pool in configuration.pools {
            let prober: Prober
            do { prober = try Prober(spec: pool.probe) } catch {
                logger.error("pool skipped: its probe cannot be built", metadata: ["pool": "\(pool.name)", "error": "\(error)"])
                continue
            }
            for backend in pool.backends {
                // A backend already down when a reload starts this generation keeps being reaped.
                if state.state(pool: pool.name, backend: backend) == .down {
                    downEvents.yield(DownBackend(pool: pool, backend: backend, reason: .stillDown))
                }
                let loop = BackendProbeLoop(
                    loop: group.next(), prober: prober, backend: backend, interval: pool.interval,
                    onResult: recorder(pool: pool, backend: backend, downEvents: downEvents))
                loops.append(loop)
                loopsByPool.withLock { $0[pool.name, default: []].append(loop) }
            }
        }
        for loop in loops { loop.start() }
        return Generation(loops: loops, downEvents: downEvents, reaping: reaping)
    }

    /// What happens with each probe result, on the event loop that produced it.
    func recorder(
        pool: PoolConfiguration, backend: Endpoint, downEvents: AsyncStream<DownBackend>.Continuation
    ) -> @Sendable (ProbeResult) -> Void {
        let label = backend.description
        let up = metrics.backendUp(pool: pool.name, backend: label)
        let duration = metrics.probeDuration(pool: pool.name, backend: label)
        let successes = metrics.probes(pool: pool.name, backend: label, result: "success")
        let failures = metrics.probes(pool: pool.name, backend: label, result: "failure")
        let transitionsUp = metrics.transitions(pool: pool.name, backend: label, to: "up")
        let transitionsDown = metrics.transitions(pool: pool.name, backend: label, to: "down")
        return { [state, logger] result in
            duration.record(result.duration)
            (result.success ? successes : failures).increment()
            let (health, changed) = state.record(result, pool: pool.name, backend: backend)
            up.set(to: health == .up ? 1.0 : 0.0)
            guard let changed else { return }
            (changed == .up ? transitionsUp : transitionsDown).increment()
            logger.notice("backend \(changed.rawValue)", metadata: [
                "pool": "\(pool.name)", "backend": "\(label)", "probe": "\(result.detail)",
                "probe_ms": "\((result.duration.seconds * 1_000_000).rounded() / 1000)",
            ])
            if changed == .down {
                downEvents.yield(DownBackend(pool: pool, backend: backend, reason: .down))
            }
        }
    }

    func reapWhileDown(_ event: DownBackend, probeOthers: @escaping @Sendable () async -> Void) async {
        let clock = ContinuousClock()
        let first = clock.now
        await reaper.reap(pool: event.pool, backend: event.backend, reason: event.reason, probeOthers: probeOthers)
        var schedule = Self.followUpReaps.map { first + $0 }
        var next = first + Self.downReapCadence
        while !Task.isCancelled {
            let due = schedule.isEmpty ? next : schedule.removeFirst()
            try? await Task.sleep(until: due, clock: clock)
            guard !Task.isCancelled, state.state(pool: event.pool.name, backend: event.backend) == .down else { return }
            await reaper.reap(pool: event.pool, backend: event.backend, reason: .stillDown)
            if due >= next {
                // Start to start; a reap slower than the cadence is followed by the next one at once.
                next = max(next + Self.downReapCadence, clock.now)
            }
        }
    }
}
