import Netlink
import NetworkAddress
import OS

/// RTM_GETROUTE for one destination: what `ip route get ADDRESS` asks.
public struct RouteQuery: NetlinkRequest {
    public var destination: IPAddress

    public init(destination: IPAddress) {
        self.destination = destination
    }

    public var messageType: UInt16 { 26 }  // RTM_GETROUTE
    public var flags: UInt16 { 1 }  // NLM_F_REQUEST: one route, not a dump
    public var netlinkOperation: NetlinkOperation { .routeGet }

    public func writePayload(into writer: inout NetlinkMessageWriter) {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags u32.
        writer.append(hostOrder: destination.family)
        writer.append(hostOrder: UInt8(destination.family == 2 ? 32 : 128))
        for _ in 0..<6 { writer.append(hostOrder: UInt8(0)) }
        writer.append(hostOrder: UInt32(0))
        writer.appendAttribute(type: 1, value: destination.networkBytes)  // RTA_DST
    }
}

/// The route the kernel would use toward an address.
public struct Route: Sendable, Equatable {
    /// The output interface; nil for a multipath route (no single interface to watch).
    public var interface: Int32?
    /// The next hop when it is not on the destination's own link.
    public var gateway: IPAddress?

    /// From the RTM_NEWROUTE answer.
    public static func parse(_ message: NetlinkMessage) -> Route? {
        guard message.type == 24, message.payload.count >= 12 else { return nil }  // RTM_NEWROUTE
        let family = ByteReader(message.payload).hostOrder(UInt8.self, at: 0) ?? 0
        let attributes = NetlinkAttributes(message.payload.dropFirst(12))
        if attributes[9] != nil { return Route(interface: nil, gateway: nil) }  // RTA_MULTIPATH
        let interface = attributes[4].flatMap { $0.reader.hostOrder(Int32.self, at: 0) }  // RTA_OIF
        let gateway = attributes[5].flatMap { IPAddress(family: family, bytes: $0.value) }  // RTA_GATEWAY
        return Route(interface: interface, gateway: gateway)
    }
}

/// An rtnetlink socket of the calling thread's namespace: route lookups, and (with `listening`)
/// the link and neighbour announcements.
public final class RouteWatch {
    private let socket: NetlinkSocket

    /// RTMGRP_LINK | RTMGRP_NEIGH, the groups' bits in the legacy bind mask.
    static let groups: UInt32 = 0x1 | 0x4

    public init(listening: Bool) throws(SystemCallError) {
        socket = try NetlinkSocket(bus: .route, groups: listening ? Self.groups : 0)
        if listening { try? socket.setReceiveBufferSize(1 << 20) }
    }

    public func route(to destination: IPAddress) throws(SystemCallError) -> Route? {
        try socket.fetch(RouteQuery(destination: destination)).flatMap(Route.parse)
    }

    /// The announcements that came within `milliseconds`. A dropped batch (ENOBUFS) is reported as
    /// `overrun`: the caller looks at what it cares about again.
    public func next(waitingUpTo milliseconds: Int32) throws(SystemCallError) -> (events: [RouteEvent], overrun: Bool) {
        var events: [RouteEvent] = []
        var overrun = false
        guard try socket.waitReadable(milliseconds: milliseconds) else { return (events, overrun) }
        repeat {
            do {
                for message in try socket.receive() { if let event = RouteEvent.parse(message) { events.append(event) } }
            } catch  where error.errno == .noBufferSpace {
                overrun = true
            }
        } while try socket.waitReadable(milliseconds: 0)
        return (events, overrun)
    }
}
