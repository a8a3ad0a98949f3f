/// A request that serializes itself; the socket adds sequence numbers and batches.
public protocol NetlinkRequest: Sendable {
    var messageType: UInt16 { get }
    var flags: UInt16 { get }
    /// How errors name this request: the message type as the kernel headers spell it.
    var callName: String { get }
    func writePayload(into writer: inout NetlinkMessageWriter)
}

extension NetlinkRequest {
    public func serialized(sequence: UInt32, portID: UInt32 = 0) -> [UInt8] {
        var writer = NetlinkMessageWriter(type: messageType, flags: flags, sequence: sequence, portID: portID)
        writePayload(into: &writer)
        return writer.finish()
    }
}
