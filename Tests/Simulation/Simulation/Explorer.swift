/// Runs worlds seed after seed; a failing one is shrunk to the fewest happenings that still fail.
public enum Explorer {
    public struct Failure: Sendable {
        public var seed: UInt64
        public var violation: String
        /// The happenings left after shrinking, and the trace of that run.
        public var happenings: [String]
        public var trace: [String]
        /// The world's knobs: budget, and per pool its probing, floor and options.
        public var setting: String

        public var report: String {
            """
            seed \(seed): \(violation)
            \(setting)
            shrunk to \(happenings.count) happenings:
            \(happenings.map { "  \($0)" }.joined(separator: "\n"))
            trace of the shrunk run (last 60 lines):
            \(trace.suffix(60).map { "  \($0)" }.joined(separator: "\n"))
            replay: make sim SIM_SEED=\(seed)
            """
        }
    }

    /// One world; nil when it kept every invariant.
    public static func run(_ world: World) -> Simulator {
        let simulator = Simulator(world: world)
        simulator.run()
        return simulator
    }

    /// Worlds `first ..< first + count`; stops at the first failure, shrunk. `progress` hears every
    /// `every` worlds how many ran clean.
    public static func explore(
        from first: UInt64, count: Int, every: Int = 0, progress: (Int) -> Void = { _ in }
    ) -> (worlds: Int, ends: Int, failure: Failure?) {
        var ends = 0
        for offset in 0..<count {
            if every > 0, offset > 0, offset % every == 0 { progress(offset) }
            let seed = first &+ UInt64(offset)
            let world = World.generate(seed: seed)
            let simulator = run(world)
            ends += simulator.ends.count
            if let violation = simulator.violation {
                return (offset + 1, ends, shrink(world, violation: violation))
            }
        }
        return (count, ends, nil)
    }

    /// Removes happenings one at a time while the world still breaks an invariant.
    public static func shrink(_ world: World, violation: String) -> Failure {
        var smallest = world
        var last = violation
        var trace = run(world).trace
        var index = 0
        while index < smallest.happenings.count {
            var candidate = smallest
            candidate.happenings.remove(at: index)
            let simulator = run(candidate)
            if let broken = simulator.violation {
                smallest = candidate
                last = broken
                trace = simulator.trace
            } else {
                index += 1
            }
        }
        return Failure(
            seed: world.seed, violation: last, happenings: smallest.happenings.map(\.description), trace: trace, setting: world.setting)
    }
}
