import OS
import Testing

/// A purge's reply-source dump waits on a OneShot for the socket count: the first settle wins (the
/// early "large" signal before the fallback after the walk), and every waiter gets through.
@Suite struct OneShotTests {
    @Test func theFirstSettleWinsAndLaterOnesAreIgnored() {
        let decision = OneShot<Bool>()
        decision.settle(false)
        decision.settle(true)
        #expect(decision.wait() == false)
        #expect(decision.wait() == false)
    }

    @Test func waitersOnOtherThreadsAreReleasedBySettling() throws {
        let decision = OneShot<Int>()
        let waiters = (0..<3).map { _ in BackgroundWork { () -> Int in decision.wait() } }
        decision.settle(7)
        #expect(try waiters.map { try $0.wait() } == [7, 7, 7])
    }
}
