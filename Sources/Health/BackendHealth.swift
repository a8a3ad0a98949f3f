/// Up or down with hysteresis: `rise` consecutive successes to go up, `fall` consecutive failures
/// to go down, so one lost probe never condemns a backend and one lucky probe never restores it.
public struct BackendHealth: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        case unknown, up, down
    }

    public let rise: Int
    public let fall: Int
    public private(set) var state: State = .unknown
    public private(set) var consecutiveSuccesses = 0
    public private(set) var consecutiveFailures = 0

    public init(rise: Int, fall: Int) {
        precondition(rise >= 1 && fall >= 1, "rise and fall are validated by the configuration")
        self.rise = rise
        self.fall = fall
    }

    /// Records one probe result; returns the new state when it changed.
    public mutating func record(success: Bool) -> State? {
        if success {
            consecutiveSuccesses += 1
            consecutiveFailures = 0
            if state != .up && consecutiveSuccesses >= rise {
                state = .up
                return .up
            }
        } else {
            consecutiveFailures += 1
            consecutiveSuccesses = 0
            if state != .down && consecutiveFailures >= fall {
                state = .down
                return .down
            }
        }
        return nil
    }
}
