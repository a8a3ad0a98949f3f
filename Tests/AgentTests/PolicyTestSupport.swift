@testable import Agent

extension ReapPolicy {
    /// Whether a single-flow end decided now, in the backend's current episode, would still run.
    func stillEndsNow(_ key: BackendKey) -> Bool {
        episode(of: key).map { stillEnds(key, episode: $0) } ?? false
    }

    /// Every pass among `actions` comes back at `instant`, having ended nothing: a backend never
    /// has two passes out, so a test that ticks on feeds each one back.
    mutating func passesReturn(_ actions: [Action], at instant: ContinuousClock.Instant) {
        for case .reap(let key, let reason, let limit, let scope, let episode) in actions {
            _ = handle(
                .reaped(
                    .init(
                        pool: key.pool, backend: key.backend, reason: reason, ended: 0, leftByLimit: 0, at: instant, scope: scope,
                        granted: limit, episode: episode)))
        }
    }
}
