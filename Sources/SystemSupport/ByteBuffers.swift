/// Drops the consumed front of an input buffer (everything before `readIndex`)
/// when that pays: at once when all is consumed, else once it is over half.
/// Returns how many bytes were dropped; read positions move down by as many.
public func compactConsumed(_ buffer: inout [UInt8], readIndex: Int) -> Int {
    if readIndex == buffer.count {
        buffer.removeAll(keepingCapacity: true)
        return readIndex
    }
    if readIndex > 8192 && readIndex * 2 > buffer.count {
        buffer.removeFirst(readIndex)
        return readIndex
    }
    return 0
}
