import Netlink
import NetworkAddress
import OS

/// Conntrack's own announcements of new flows (the NFNLGRP_CONNTRACK_NEW multicast group): how
/// the agent learns that something connects toward a dead backend without walking any table. The
/// kernel sends only NEW events to this group, never updates or destroys; a namespace whose
/// conntrack tracks nothing announces nothing.
public final class ConntrackNewFlows {
    private let socket: NetlinkSocket

    /// NF_NETLINK_CONNTRACK_NEW, the group's bit in the legacy bind mask.
    static let newGroup: UInt32 = 1

    /// Subscribes in the calling thread's network namespace (the socket stays bound to it).
    public init() throws(SystemCallError) {
        socket = try NetlinkSocket(bus: .netfilter, groups: Self.newGroup)
        // A burst of new flows must not overrun the queue between two reads.
        try? socket.setReceiveBufferSize(4 << 20)
    }

    public struct Batch: Sendable {
        public var entries: [ConntrackEntry] = []
        /// The kernel dropped announcements (ENOBUFS): some new flows were missed.
        public var overrun = false
    }

    /// The flows announced within `milliseconds`, those `wanted` keeps. Parsing is the cost per
    /// new flow on the namespace, so `wanted` is asked before anything else is kept.
    public func next(waitingUpTo milliseconds: Int32, wanted: (ConntrackEntry) -> Bool) throws(SystemCallError) -> Batch {
        var batch = Batch()
        guard try socket.waitReadable(milliseconds: milliseconds) else { return batch }
        repeat {
            do {
                for message in try socket.receive() where message.type == ConntrackMessageType.new {
                    if let entry = ConntrackCodec.entry(from: message), wanted(entry) { batch.entries.append(entry) }
                }
            } catch  where error.errno == .noBufferSpace {
                batch.overrun = true
            }
        } while try socket.waitReadable(milliseconds: 0)
        return batch
    }
}
