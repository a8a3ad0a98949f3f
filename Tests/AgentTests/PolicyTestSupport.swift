@testable import Agent

extension ReapPolicy {
    /// Every pass among `actions` comes back at `instant`, having ended nothing: a backend never
    /// has two passes out, so a test that ticks on feeds each one back.
    mutating func passesReturn(_ actions: [Action], at instant: ContinuousClock.Instant) {
        for case .reap(let key, let reason, let limit, let scope) in actions {
            _ = handle(
                .reaped(
                    .init(
                        pool: key.pool, backend: key.backend, reason: reason, ended: 0, leftByLimit: 0, at: instant, scope: scope,
                        granted: limit)))
        }
    }
}
