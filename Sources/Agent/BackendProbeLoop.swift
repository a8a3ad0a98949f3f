import Health
import NIOCore
import NetworkAddress
import Synchronization

/// Probes one backend forever on one event loop: a scheduled task, a probe, a callback with the
/// result, the next scheduled task. No thread hop per probe, which is what keeps 200 backends at
/// one probe a second cheap.
final class BackendProbeLoop: Sendable {
    let loop: any EventLoop
    let prober: Prober
    let backend: Endpoint
    let interval: Duration
    let onResult: @Sendable (ProbeResult) -> Void
    private let scheduled = Mutex<Scheduled<Void>?>(nil)
    private let stopped = Atomic<Bool>(false)

    init(loop: any EventLoop, prober: Prober, backend: Endpoint, interval: Duration, onResult: @escaping @Sendable (ProbeResult) -> Void) {
        self.loop = loop
        self.prober = prober
        self.backend = backend
        self.interval = interval
        self.onResult = onResult
    }

    /// Starts at a random point of the interval, which spreads one node's probes, and many nodes'
    /// agents, over time instead of in lockstep.
    func start() {
        schedule(after: interval * Double.random(in: 0..<1))
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        scheduled.withLock { $0?.cancel() }
    }

    private func schedule(after delay: Duration) {
        guard !stopped.load(ordering: .relaxed) else { return }
        let task = loop.scheduleTask(in: .nanoseconds(Int64(delay.seconds * 1e9))) { [self] in probeOnce() }
        scheduled.withLock { $0 = task }
    }

    /// One probe now, outside the schedule, recorded like any other (with its own timeout, if given).
    func probeNow(timeout: Duration? = nil) async {
        _ = try? await prober.probe(backend, on: loop, timeout: timeout).map { [onResult] in onResult($0) }.get()
    }

    private func probeOnce() {
        let started = ContinuousClock.now
        prober.probe(backend, on: loop).whenSuccess { [self] result in
            guard !stopped.load(ordering: .relaxed) else { return }
            onResult(result)
            // Start to start, with ±10 % jitter so probes do not drift into lockstep.
            let next = interval * Double.random(in: 0.9...1.1) - (ContinuousClock.now - started)
            schedule(after: max(.zero, next))
        }
    }
}
