using ILGPU;
using ILGPU.Runtime;

namespace NativeLora.Devices;

/// <summary>
/// The device allocator: PyTorch's CUDACachingAllocator scheme (c10/cuda/CUDACachingAllocator.cpp) for
/// one stream. Requests are rounded up to 512 bytes; memory comes from the device in segments —
/// 2 MiB for requests of at most 1 MiB (the small pool), 20 MiB for requests under 10 MiB, else the
/// request rounded up to 2 MiB (the large pool). A request takes the smallest free block of its pool
/// that fits (best fit) and splits off the rest when the rest is worth keeping (any rest in the
/// small pool, more than 1 MiB in the large pool); a freed block merges with its free neighbours, so
/// memory freed by one shape serves the next shape. That is what the exact-size pool it replaces
/// could not do: packed batches change shape every step and its cached buffers never fit again.
///
/// One departure, so that the cache cannot creep: when a request misses (no free block fits), the
/// pool's completely free segments — none of which fits, or it would have been taken — go back to
/// the device before a new segment is asked for. In steady state (the same shapes every step) no
/// request misses and nothing is freed; when shapes change the cache follows them instead of growing.
///
/// All work is on one stream (ILGPU's, shared with the native core), so a block freed on the host may
/// be handed out again at once: later kernels are queued behind the ones that used it.
/// </summary>
internal sealed class CachingAllocator
{
    public const long MinBlockSize = 512;          // every size is rounded up to this
    public const long SmallSize = 1L << 20;         // largest request of the small pool
    public const long SmallSegment = 2L << 20;      // segment size of the small pool
    public const long LargeSegment = 20L << 20;     // segment for large requests under MinLargeAlloc
    public const long MinLargeAlloc = 10L << 20;    // requests from here on get a segment of their own size
    public const long RoundLarge = 2L << 20;        // ... rounded up to this

    private readonly Func<long, MemoryBuffer> _allocateSegment;
    private readonly SortedSet<Block> _smallFree = new(BlockOrder.Instance), _largeFree = new(BlockOrder.Instance);
    private readonly List<Segment> _segments = new();
    private readonly object _lock = new();
    private int _nextSegmentId;
    private long _allocated, _peakAllocated, _requested, _peakRequested, _reserved, _peakReserved;
    private long _allocations, _segmentAllocations, _segmentFrees;

    /// <param name="allocateSegment">asks the device for a buffer of the given bytes; throws OutOfMemoryException or AcceleratorException when it cannot</param>
    public CachingAllocator(Func<long, MemoryBuffer> allocateSegment) => _allocateSegment = allocateSegment;

    /// <summary>One buffer the device gave; its blocks, linked in address order from <see cref="First"/>, cover it exactly.</summary>
    internal sealed class Segment(MemoryBuffer buffer, long size, bool small, int id)
    {
        public MemoryBuffer Buffer { get; } = buffer;
        public long Size { get; } = size;
        public bool Small { get; } = small;
        public int Id { get; } = id;
        public Block? First;
    }

    /// <summary>A range [Offset, Offset+Size) of a segment, allocated or free, linked to its neighbours in the segment.</summary>
    internal sealed class Block(Segment segment, long offset, long size)
    {
        public Segment Segment { get; } = segment;
        public long Offset { get; set; } = offset;
        public long Size { get; set; } = size;
        public long Requested { get; set; }
        public bool Allocated { get; set; }
        public Block? Prev, Next;
        public MemoryBuffer Buffer => Segment.Buffer;
    }

    // free blocks by (size, segment, offset): the first one at least as large as a request is its best fit
    private sealed class BlockOrder : IComparer<Block>
    {
        public static readonly BlockOrder Instance = new();
        public int Compare(Block? a, Block? b)
        {
            int c = a!.Size.CompareTo(b!.Size);
            if (c != 0) return c;
            c = a.Segment.Id.CompareTo(b.Segment.Id);
            return c != 0 ? c : a.Offset.CompareTo(b.Offset);
        }
    }

    public static long RoundSize(long bytes) => Math.Max(MinBlockSize, (bytes + MinBlockSize - 1) / MinBlockSize * MinBlockSize);

    public static long SegmentSize(long roundedSize) =>
        roundedSize <= SmallSize ? SmallSegment
        : roundedSize < MinLargeAlloc ? LargeSegment
        : (roundedSize + RoundLarge - 1) / RoundLarge * RoundLarge;

    /// <summary>A block of at least <paramref name="bytes"/> bytes. Throws OutOfMemoryException (with the allocator's figures) when the device has no room even after the cache is emptied.</summary>
    public Block Allocate(long bytes)
    {
        long size = RoundSize(bytes);
        bool small = size <= SmallSize;
        var pool = small ? _smallFree : _largeFree;
        lock (_lock)
        {
            var block = BestFit(pool, size);
            if (block == null)
            {
                ReleaseFreeSegments(small); // none fits: they are dead cache for this request
                block = NewSegment(size, small);
            }
            else pool.Remove(block);

            long rest = block.Size - size;
            if (small ? rest >= MinBlockSize : rest > SmallSize)
            {
                var remaining = new Block(block.Segment, block.Offset + size, rest) { Prev = block, Next = block.Next };
                if (block.Next != null) block.Next.Prev = remaining;
                block.Next = remaining;
                block.Size = size;
                pool.Add(remaining);
            }
            block.Allocated = true;
            block.Requested = bytes;
            _allocated += block.Size;
            _requested += bytes;
            _allocations++;
            _peakAllocated = Math.Max(_peakAllocated, _allocated);
            _peakRequested = Math.Max(_peakRequested, _requested);
            return block;
        }
    }

    /// <summary>Returns a block to its pool, merged with free neighbours.</summary>
    public void Free(Block block)
    {
        lock (_lock)
        {
            if (!block.Allocated) throw new InvalidOperationException("block freed twice");
            block.Allocated = false;
            _allocated -= block.Size;
            _requested -= block.Requested;
            var pool = block.Segment.Small ? _smallFree : _largeFree;
            if (block.Prev is { Allocated: false } prev)
            {
                pool.Remove(prev);
                prev.Size += block.Size;
                prev.Next = block.Next;
                if (block.Next != null) block.Next.Prev = prev;
                block = prev;
            }
            if (block.Next is { Allocated: false } next)
            {
                pool.Remove(next);
                block.Size += next.Size;
                block.Next = next.Next;
                if (next.Next != null) next.Next.Prev = block;
            }
            pool.Add(block);
        }
    }

    /// <summary>Gives every completely free segment back to the device (PyTorch's empty_cache).</summary>
    public void EmptyCache()
    {
        lock (_lock)
        {
            ReleaseFreeSegments(small: true);
            ReleaseFreeSegments(small: false);
        }
    }

    /// <summary>Figures in bytes: allocated = blocks handed out (rounded sizes), requested = what was asked for, reserved = segments held.</summary>
    public AllocatorStats Stats()
    {
        lock (_lock)
            return new AllocatorStats(_allocated, _peakAllocated, _requested, _peakRequested, _reserved, _peakReserved,
                _segments.Count, _allocations, _segmentAllocations, _segmentFrees, LargestFreeBlock());
    }

    /// <summary>Peaks start again from the current figures.</summary>
    public void ResetPeaks()
    {
        lock (_lock)
        {
            _peakAllocated = _allocated;
            _peakRequested = _requested;
            _peakReserved = _reserved;
        }
    }

    /// <summary>Checks the block lists against the counters (tests).</summary>
    internal void Validate()
    {
        lock (_lock)
        {
            long allocated = 0, reserved = 0;
            int freeCount = 0;
            foreach (var s in _segments)
            {
                reserved += s.Size;
                long offset = 0;
                Block? prev = null;
                for (var b = s.First; b != null; prev = b, b = b.Next)
                {
                    if (b.Offset != offset || b.Prev != prev || b.Segment != s) throw new InvalidOperationException($"segment {s.Id}: broken block list at offset {offset}");
                    if (!b.Allocated && prev is { Allocated: false }) throw new InvalidOperationException($"segment {s.Id}: two free neighbours at offset {b.Offset}");
                    if (b.Allocated) allocated += b.Size;
                    else
                    {
                        freeCount++;
                        if (!(s.Small ? _smallFree : _largeFree).Contains(b)) throw new InvalidOperationException($"segment {s.Id}: free block at {b.Offset} is not in its pool");
                    }
                    offset += b.Size;
                }
                if (offset != s.Size) throw new InvalidOperationException($"segment {s.Id}: blocks cover {offset} of {s.Size} bytes");
            }
            if (allocated != _allocated || reserved != _reserved || freeCount != _smallFree.Count + _largeFree.Count)
                throw new InvalidOperationException($"counters disagree: allocated {allocated} vs {_allocated}, reserved {reserved} vs {_reserved}, free blocks {freeCount} vs {_smallFree.Count + _largeFree.Count}");
        }
    }

    private static Block? BestFit(SortedSet<Block> pool, long size)
    {
        if (pool.Count == 0 || pool.Max!.Size < size) return null;
        // the probe sorts before every block of this size (segment ids and offsets are ≥ 0)
        var probe = new Block(ProbeSegment, -1, size);
        return pool.GetViewBetween(probe, pool.Max).Min;
    }

    private static readonly Segment ProbeSegment = new(null!, 0, false, -1);

    private Block NewSegment(long size, bool small)
    {
        long segmentSize = SegmentSize(size);
        MemoryBuffer buffer;
        try
        {
            buffer = _allocateSegment(segmentSize);
        }
        catch (Exception e) when (e is OutOfMemoryException or AcceleratorException)
        {
            ReleaseFreeSegments(!small); // the other pool's cache may be what is missing
            try
            {
                buffer = _allocateSegment(segmentSize);
            }
            catch (Exception e2) when (e2 is OutOfMemoryException or AcceleratorException)
            {
                throw new OutOfMemoryException(
                    $"the device has no room for a segment of {segmentSize:N0} bytes (request {size:N0}); this process holds {_reserved:N0} bytes " +
                    $"in {_segments.Count} segments, {_allocated:N0} of them in live tensors: {e2.Message}", e2);
            }
        }
        var segment = new Segment(buffer, segmentSize, small, _nextSegmentId++);
        var block = new Block(segment, 0, segmentSize);
        segment.First = block;
        _segments.Add(segment);
        _reserved += segmentSize;
        _peakReserved = Math.Max(_peakReserved, _reserved);
        _segmentAllocations++;
        return block;
    }

    private void ReleaseFreeSegments(bool small)
    {
        var pool = small ? _smallFree : _largeFree;
        for (int i = _segments.Count - 1; i >= 0; i--)
        {
            var s = _segments[i];
            if (s.Small != small || s.First is not { Allocated: false, Next: null } whole) continue;
            pool.Remove(whole);
            _segments.RemoveAt(i);
            _reserved -= s.Size;
            _segmentFrees++;
            s.Buffer.Dispose();
        }
    }

    private long LargestFreeBlock() => Math.Max(_smallFree.Count > 0 ? _smallFree.Max!.Size : 0, _largeFree.Count > 0 ? _largeFree.Max!.Size : 0);
}

/// <summary>The allocator's figures (bytes, counts). Peaks are since the device opened or the last ResetPeak.</summary>
public readonly record struct AllocatorStats(long Allocated, long PeakAllocated, long Requested, long PeakRequested, long Reserved, long PeakReserved,
    int Segments, long Allocations, long SegmentAllocations, long SegmentFrees, long LargestFreeBlock);
