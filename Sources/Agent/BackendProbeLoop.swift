import OS
import Health
import NIOCore
import NetworkAddress
import Synchronization

/// One backend's probes, from `start` to `stop`, each result handed to the pipeline.
protocol ProbeLoop: Sendable {
    func start()
    func stop()
    /// One probe now, outside the schedule, recorded like any other (with its own timeout, if given).
    func probeNow(timeout: Duration?) async
}

/// A backend of a tcp pool, or of an http pool on fresh connections, probed by the agent's
/// TCPProbeEngine (its own thread, no NIO channel).
final class EngineProbeLoop: ProbeLoop {
    let engine: TCPProbeEngine
    let target: Endpoint
    let check: TCPProbeEngine.Check
    let interval: Duration
    let timeout: Duration
    let onResult: @Sendable (ProbeResult) -> Void
    private let id = Mutex<Int?>(nil)
    private let stopped = Atomic<Bool>(false)

    init(engine: TCPProbeEngine, prober: Prober, backend: Endpoint, interval: Duration, onResult: @escaping @Sendable (ProbeResult) -> Void)
    {
        self.engine = engine
        let target = Endpoint(address: backend.address, port: prober.spec.port ?? backend.port)
        self.target = target
        self.check = prober.spec.kind == .http ? .http(prober.spec, target: target) : .connect
        self.interval = interval
        self.timeout = prober.spec.timeout
        self.onResult = onResult
    }

    func start() {
        // Until `stop`: a probe in flight when its generation ends tells the policy nothing.
        let added = engine.add(target: target, check: check, interval: interval, timeout: timeout) { [self] result in
            guard !stopped.load(ordering: .relaxed) else { return }
            onResult(result)
        }
        id.withLock { $0 = added }
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        if let added = id.withLock({ $0 }) { engine.remove(added) }
    }

    func probeNow(timeout: Duration?) async {
        let result = await engine.probe(target, check: check, timeout: timeout ?? self.timeout)
        guard !stopped.load(ordering: .relaxed) else { return }
        onResult(result)
    }
}

/// Probes one backend forever on one event loop: a scheduled task, a probe, a callback with the
/// result, the next scheduled task. No thread hop per probe, which is what keeps 200 backends at
/// one probe a second cheap.
final class BackendProbeLoop: ProbeLoop {
    let loop: any EventLoop
    let session: ProbeSession
    let interval: Duration
    let onResult: @Sendable (ProbeResult) -> Void
    private let scheduled = Mutex<Scheduled<Void>?>(nil)
    private let stopped = Atomic<Bool>(false)
    /// The jitter's own generator: the system's costs a getrandom call per probe.
    private let jitter: Mutex<SeededRandom>

    init(loop: any EventLoop, prober: Prober, backend: Endpoint, interval: Duration, onResult: @escaping @Sendable (ProbeResult) -> Void) {
        self.loop = loop
        self.session = ProbeSession(prober: prober, backend: backend, loop: loop)
        self.interval = interval
        self.onResult = onResult
        self.jitter = Mutex(SeededRandom())
    }

    /// Starts at a random point of the interval, which spreads one node's probes, and many nodes'
    /// agents, over time instead of in lockstep.
    func start() {
        schedule(after: interval * Double.random(in: 0..<1))
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        scheduled.withLock { $0?.cancel() }
        session.close()
    }

    private func schedule(after delay: Duration) {
        guard !stopped.load(ordering: .relaxed) else { return }
        let task = loop.scheduleTask(in: .nanoseconds(Int64(delay.seconds * 1e9))) { [self] in probeOnce() }
        scheduled.withLock { $0 = task }
    }

    /// One probe now, outside the schedule, recorded like any other (with its own timeout, if given).
    func probeNow(timeout: Duration?) async {
        _ = try? await session.probe(timeout: timeout).map { [onResult] in onResult($0) }.get()
    }

    private func probeOnce() {
        let started = ContinuousClock.now
        session.probe().whenSuccess { [self] result in
            guard !stopped.load(ordering: .relaxed) else { return }
            onResult(result)
            // Start to start, with ±10 % jitter so probes do not drift into lockstep.
            let factor = jitter.withLock { Double.random(in: 0.9...1.1, using: &$0) }
            let next = interval * factor - (ContinuousClock.now - started)
            schedule(after: max(.zero, next))
        }
    }
}

extension ProbeSpec {
    /// tcp probes, and http ones on fresh connections, run on the agent's TCPProbeEngine.
    var runsOnEngine: Bool { kind == .tcp || (kind == .http && !reuse) }
}
