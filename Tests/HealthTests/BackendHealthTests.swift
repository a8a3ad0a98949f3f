import Health
import Testing

@Suite struct BackendHealthTests {
    @Test func needsRiseSuccessesToGoUpAndFallFailuresToGoDown() {
        var health = BackendHealth(rise: 2, fall: 3)
        #expect(health.record(success: true) == nil)
        #expect(health.record(success: true) == .up)
        #expect(health.record(success: false) == nil)
        #expect(health.record(success: false) == nil)
        #expect(health.record(success: false) == .down)
        #expect(health.record(success: false) == nil)
        #expect(health.state == .down)
    }

    @Test func aFlapFasterThanFallNeverGoesDown() {
        var health = BackendHealth(rise: 2, fall: 2)
        _ = health.record(success: true)
        _ = health.record(success: true)
        for _ in 0..<50 {
            #expect(health.record(success: false) == nil)
            #expect(health.record(success: true) == nil)
        }
        #expect(health.state == .up)
    }

    @Test func startsUnknownAndCanGoStraightDown() {
        var health = BackendHealth(rise: 3, fall: 1)
        #expect(health.state == .unknown)
        #expect(health.record(success: false) == .down)
        #expect(health.record(success: true) == nil)
        #expect(health.record(success: true) == nil)
        #expect(health.record(success: true) == .up)
    }
}
