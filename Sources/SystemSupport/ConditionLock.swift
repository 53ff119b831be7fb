#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value behind a pthread mutex with condition variables to wait on: for
/// a thread that sleeps until others hand it work, or until a peer answers.
///
/// Waits use the monotonic clock, so a wall-clock jump neither shortens nor
/// stretches a timeout.
public final class ConditionLock<Value: Sendable>: @unchecked Sendable {  // the mutex guards every access to `value`
    @usableFromInline var value: Value
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let conditions: UnsafeMutablePointer<pthread_cond_t>
    private let conditionCount: Int

    /// A lock with `conditions` separate condition variables (numbered from 0).
    public init(_ value: Value, conditions: Int = 1) {
        precondition(conditions > 0, "at least one condition")
        self.value = value
        conditionCount = conditions
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        self.conditions = .allocate(capacity: conditions)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if canImport(Glibc)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        for i in 0..<conditions { pthread_cond_init(self.conditions + i, &attributes) }
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        for i in 0..<conditionCount { pthread_cond_destroy(conditions + i) }
        conditions.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the value, holding the lock.
    @inlinable
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Holds the lock, sleeping on `condition` until `isDone` returns true or
    /// `deadlineNanos` (monotonic, see `monotonicNanos()`) passes; then runs
    /// `body`. `body` learns whether `isDone` held.
    public func wait<Result>(
        on condition: Int = 0, until deadlineNanos: UInt64, for isDone: (inout Value) -> Bool,
        then body: (inout Value, Bool) throws -> Result
    ) rethrows -> Result {
        precondition(condition < conditionCount, "no such condition")
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var deadline = timespec(
            tv_sec: Int(deadlineNanos / 1_000_000_000), tv_nsec: Int(deadlineNanos % 1_000_000_000))
        var done = isDone(&value)
        while !done {
            if pthread_cond_timedwait(conditions + condition, mutex, &deadline) == ETIMEDOUT {
                done = isDone(&value)
                break
            }
            done = isDone(&value)
        }
        return try body(&value, done)
    }

    /// Wakes every thread waiting on `condition`.
    public func broadcast(_ condition: Int = 0) {
        precondition(condition < conditionCount, "no such condition")
        pthread_cond_broadcast(conditions + condition)
    }

    /// Wakes one thread waiting on `condition`.
    public func signal(_ condition: Int = 0) {
        precondition(condition < conditionCount, "no such condition")
        pthread_cond_signal(conditions + condition)
    }
}
