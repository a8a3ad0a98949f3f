import Testing

@testable import Agent

/// A full conntrack table is named once when it fills and once when it drains, not on every look.
@Suite struct ConntrackFillTests {
    @Test func fullAt95PercentAndClearBelow90() {
        var fill = ConntrackFill()
        #expect(fill.observe(entries: 900, limit: 1000) == nil)
        #expect(fill.observe(entries: 950, limit: 1000) == .becameFull(entries: 950, limit: 1000))
        #expect(fill.full)
        #expect(fill.observe(entries: 1000, limit: 1000) == nil, "said once")
        #expect(fill.observe(entries: 920, limit: 1000) == nil, "between the two shares: still full")
        #expect(fill.observe(entries: 899, limit: 1000) == .noLongerFull(entries: 899, limit: 1000))
        #expect(!fill.full)
        #expect(fill.observe(entries: 10, limit: 0) == nil, "no limit read: nothing to judge")
    }

    /// The look at a verdict has no history: the full share alone, the same threshold.
    @Test func aLookWithoutHistoryUsesTheSameShare() {
        #expect(ConntrackFill.isFull(entries: 950, limit: 1000))
        #expect(!ConntrackFill.isFull(entries: 949, limit: 1000))
        #expect(!ConntrackFill.isFull(entries: 10, limit: 0))
    }
}
