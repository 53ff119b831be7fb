#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The process's two clocks: the monotonic one for intervals and deadlines
// (it never jumps), the wall clock for what crosses machines (expiry times).

/// Nanoseconds on the monotonic clock (the clock `ConditionLock` waits use).
@inlinable
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Milliseconds on the monotonic clock.
@inlinable
public func monotonicMillis() -> Int64 {
    Int64(monotonicNanos() / 1_000_000)
}

/// Nanoseconds since 1970 on the wall clock.
public func wallClockNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Milliseconds since 1970 on the wall clock.
public func wallClockMillis() -> Int64 {
    Int64(wallClockNanos() / 1_000_000)
}

/// The wall clock's local time of day, `HH:MM:SS.mmm` (for lines people read).
public func localTimeOfDay() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    var parts = tm()
    var seconds = now.tv_sec
    localtime_r(&seconds, &parts)
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    let millis = String(Int(now.tv_nsec / 1_000_000))
    return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(String(repeating: "0", count: 3 - millis.count))\(millis)"
}

/// Sleeps `millis` milliseconds (nothing for 0 or less), resuming after signals.
public func sleepMillis(_ millis: Int64) {
    guard millis > 0 else { return }
    var request = timespec(tv_sec: Int(millis / 1000), tv_nsec: Int(millis % 1000) * 1_000_000)
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}
