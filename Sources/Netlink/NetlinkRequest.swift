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
        var buffer: [UInt8] = []
        append(to: &buffer, sequence: sequence, portID: portID)
        return buffer
    }

    /// Appends this request to a batch buffer without an intermediate copy.
    public func append(to buffer: inout [UInt8], sequence: UInt32, portID: UInt32 = 0) {
        var writer = NetlinkMessageWriter(
            appendingTo: consume buffer, type: messageType, flags: flags, sequence: sequence, portID: portID)
        writePayload(into: &writer)
        buffer = writer.finish()
    }
}
