using ILGPU;
using ILGPU.Runtime;
using NativeLora.Devices;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Devices;

/// <summary>
/// The caching allocator on its own instance (real device buffers, the shared device's figures untouched):
/// blocks never overlap, neighbours merge, the figures match the block lists, and a workload whose
/// shapes change every step stops growing once it has seen its largest step.
/// </summary>
public class CachingAllocatorTests
{
    private static CachingAllocator NewAllocator(Func<long, MemoryBuffer>? segments = null) =>
        new(segments ?? (bytes => TestDevice.Shared.Accelerator.Allocate1D<byte>(bytes)));

    [Test]
    public void RandomAllocationsNeverOverlapAndFreedNeighboursMerge()
    {
        int seed = Environment.TickCount & 0x7fffffff;
        var rng = new Random(seed);
        var a = NewAllocator();
        var live = new List<(CachingAllocator.Block Block, byte Tag)>();
        byte nextTag = 1;
        for (int op = 0; op < 1500; op++)
        {
            if (live.Count > 0 && rng.NextDouble() < 0.45)
            {
                int i = rng.Next(live.Count);
                var (block, tag) = live[i];
                // nobody else wrote into it while it was live
                var bytes = new byte[Math.Min(block.Requested, 4096)];
                block.Buffer.AsRawArrayView(block.Offset, bytes.Length).CopyToCPU(bytes);
                Assert.That(bytes, Is.All.EqualTo(tag), $"block at {block.Offset} of segment {block.Segment.Id} was overwritten (seed {seed})");
                a.Free(block);
                live.RemoveAt(i);
            }
            else
            {
                // mostly small and mid-sized requests, sometimes one above the 10 MiB large-segment threshold
                long size = rng.NextDouble() switch
                {
                    < 0.6 => rng.Next(1, 70_000),
                    < 0.95 => rng.Next(1 << 20, 6 << 20),
                    _ => rng.Next(10 << 20, 14 << 20),
                };
                var block = a.Allocate(size);
                Assert.That(block.Size, Is.GreaterThanOrEqualTo(size).And.EqualTo(CachingAllocator.RoundSize(block.Size)), $"seed {seed}");
                byte tag = nextTag++;
                if (nextTag == 0) nextTag = 1;
                block.Buffer.AsRawArrayView(block.Offset, Math.Min(size, 4096)).MemSet(tag);
                TestDevice.Shared.Accelerator.Synchronize();
                live.Add((block, tag));
            }
            a.Validate();
        }
        foreach (var (block, _) in live) a.Free(block);
        a.Validate();
        var s = a.Stats();
        Assert.That(s.Allocated, Is.Zero);
        Assert.That(s.Requested, Is.Zero);
        // everything merged back: each segment is one free block, so emptying the cache frees them all
        a.EmptyCache();
        Assert.That(a.Stats().Reserved, Is.Zero, $"seed {seed}");
        Assert.That(a.Stats().Segments, Is.Zero, $"seed {seed}");
    }

    [Test]
    public void SmallRequestsShareASegmentAndAFreedHoleIsReusedByBestFit()
    {
        var a = NewAllocator();
        var x = a.Allocate(1000);
        var y = a.Allocate(3000);
        var z = a.Allocate(100);
        Assert.That(new[] { x.Size, y.Size, z.Size }, Is.EqualTo(new long[] { 1024, 3072, 512 }));
        Assert.That(a.Stats().Segments, Is.EqualTo(1));
        Assert.That(a.Stats().Reserved, Is.EqualTo(CachingAllocator.SmallSegment));
        Assert.That(new[] { x.Offset, y.Offset, z.Offset }, Is.EqualTo(new long[] { 0, 1024, 4096 }));
        a.Free(y);
        // the 3072-byte hole is the smallest free block that fits 2000 bytes: it is taken and split
        var w = a.Allocate(2000);
        Assert.That(w.Offset, Is.EqualTo(1024));
        Assert.That(w.Size, Is.EqualTo(2048));
        var v = a.Allocate(1024);
        Assert.That(v.Offset, Is.EqualTo(3072), "the rest of the hole");
        a.Validate();
        Assert.That(a.Stats().Allocated, Is.EqualTo(1024 + 2048 + 1024 + 512));
        Assert.That(a.Stats().Requested, Is.EqualTo(1000 + 2000 + 1024 + 100));
        foreach (var b in new[] { x, w, v, z }) a.Free(b);
        a.Validate();
        a.EmptyCache();
        Assert.That(a.Stats().Reserved, Is.Zero);
    }

    [Test]
    public void SegmentSizesFollowPyTorchsClasses()
    {
        Assert.That(CachingAllocator.RoundSize(1), Is.EqualTo(512));
        Assert.That(CachingAllocator.RoundSize(513), Is.EqualTo(1024));
        Assert.That(CachingAllocator.SegmentSize(1 << 20), Is.EqualTo(2L << 20));
        Assert.That(CachingAllocator.SegmentSize((1 << 20) + 512), Is.EqualTo(20L << 20));
        Assert.That(CachingAllocator.SegmentSize((10L << 20) - 512), Is.EqualTo(20L << 20));
        Assert.That(CachingAllocator.SegmentSize(10L << 20), Is.EqualTo(10L << 20));
        Assert.That(CachingAllocator.SegmentSize((10L << 20) + 512), Is.EqualTo(12L << 20));
    }

    [Test]
    public void ALargeBlockIsSplitOnlyWhenTheRestIsWorthKeeping()
    {
        var a = NewAllocator();
        var big = a.Allocate(12L << 20);
        Assert.That(big.Segment.Size, Is.EqualTo(12L << 20));
        a.Free(big);
        // 11.5 MiB from the free 12 MiB block: the 0.5 MiB rest is not split off (large pool keeps > 1 MiB rests)
        var b = a.Allocate(23L << 19);
        Assert.That(b.Size, Is.EqualTo(12L << 20));
        a.Free(b);
        // 8 MiB: the 4 MiB rest is split off and serves the next 3 MiB request without a new segment
        var c = a.Allocate(8L << 20);
        var d = a.Allocate(3L << 20);
        Assert.That(c.Size, Is.EqualTo(8L << 20));
        Assert.That(d.Segment, Is.SameAs(c.Segment));
        Assert.That(a.Stats().Segments, Is.EqualTo(1));
        a.Free(c);
        a.Free(d);
        a.Validate();
        a.EmptyCache();
    }

    /// <summary>
    /// Training-like steps whose token count changes every step (packed batches): each step allocates
    /// activations proportional to its tokens, frees them in reverse, and allocates a large logits-like
    /// buffer in between. The exact-size pool kept every old size; here reserved memory stops growing
    /// once the largest step has been seen, and stays within 10% of the sum the largest step needs at once.
    /// </summary>
    [Test]
    public void VaryingShapesDoNotMakeTheCacheCreep()
    {
        int seed = Environment.TickCount & 0x7fffffff;
        var rng = new Random(seed);
        var a = NewAllocator();
        const int maxTokens = 1024;
        var reservedAfter = new List<long>();
        long largestStepPeak = 0;
        for (int step = 0; step < 60; step++)
        {
            // step 0 has the largest shape, so the cache has seen it before the checks
            int tokens = step == 0 ? maxTokens : rng.Next(maxTokens * 3 / 4, maxTokens + 1);
            a.ResetPeaks();
            var held = new Stack<CachingAllocator.Block>();
            for (int layer = 0; layer < 8; layer++)
            {
                held.Push(a.Allocate(tokens * 512L * 4));
                held.Push(a.Allocate(tokens * 1376L * 4));
            }
            var logits = a.Allocate(tokens * 3000L * 4);
            a.Free(logits);
            while (held.Count > 0)
            {
                var g = a.Allocate(held.Peek().Requested); // a gradient of the same shape
                a.Free(held.Pop());
                a.Free(g);
            }
            a.Validate();
            largestStepPeak = Math.Max(largestStepPeak, a.Stats().PeakAllocated);
            reservedAfter.Add(a.Stats().Reserved);
        }
        TestContext.Progress.WriteLine($"seed {seed}: reserved after step 1 {reservedAfter[0]:N0}, after step 10 {reservedAfter[9]:N0}, largest later {reservedAfter.Skip(10).Max():N0}; largest step peak allocated {largestStepPeak:N0}");
        Assert.That(reservedAfter.Skip(10).Max(), Is.LessThanOrEqualTo(reservedAfter[9] * 1.10), $"seed {seed}");
        Assert.That(reservedAfter.Max(), Is.LessThanOrEqualTo(largestStepPeak * 1.25), $"seed {seed}");
        a.EmptyCache();
        Assert.That(a.Stats().Reserved, Is.Zero);
    }

    [Test]
    public void AMissFreesTheSegmentsThatDoNotFitAndAFullDeviceEmptiesTheOtherPool()
    {
        const long MiB = 1L << 20, budget = 50 * MiB;
        CachingAllocator a = null!;
        // a fake device of 50 MiB: refuses a segment that would take the reserved total past it
        a = NewAllocator(bytes => a.Stats().Reserved + bytes > budget
            ? throw new OutOfMemoryException($"fake device full ({a.Stats().Reserved} + {bytes} > {budget})")
            : TestDevice.Shared.Accelerator.Allocate1D<byte>(bytes));
        var x = a.Allocate(12 * MiB);
        var y = a.Allocate(14 * MiB);
        a.Free(x);
        // 13 MiB fits in no free block; the free 12 MiB segment is dead cache for it and goes back first
        var z = a.Allocate(13 * MiB);
        Assert.That(a.Stats().Reserved, Is.EqualTo(28 * MiB));
        Assert.That(a.Stats().SegmentFrees, Is.EqualTo(1));
        a.Free(y);
        a.Free(z);
        // 30 MiB: both free 14 MiB segments go back, then one of 30 MiB
        var w = a.Allocate(30 * MiB);
        Assert.That(a.Stats().Reserved, Is.EqualTo(30 * MiB));
        // a cached small-pool segment (2 MiB) ...
        a.Free(a.Allocate(1000));
        Assert.That(a.Stats().Reserved, Is.EqualTo(32 * MiB));
        // ... is released when the device cannot give a 20 MiB segment for an 8 MiB request
        var v = a.Allocate(8 * MiB);
        Assert.That(a.Stats().Reserved, Is.EqualTo(50 * MiB));
        // and past that, one clear error with the allocator's figures
        var e = Assert.Throws<OutOfMemoryException>(() => a.Allocate(16 * MiB))!;
        Assert.That(e.Message, Does.Contain("16,777,216").And.Contain("52,428,800").And.Contain("live tensors"));
        a.Free(w);
        a.Free(v);
        a.Validate();
        a.EmptyCache();
        Assert.That(a.Stats().Reserved, Is.Zero);
    }

    [Test]
    public void TensorsReturnTheirBlocksOnDispose()
    {
        var d = TestDevice.Shared;
        long before = d.MemoryStats.Allocated;
        var t = d.Allocate(DType.F32, 1000, 3);
        Assert.That(d.MemoryStats.Allocated - before, Is.EqualTo(12_288), "12,000 bytes rounded up to 512");
        var view = t.Slice(10, 5);
        view.Dispose(); // a view owns nothing
        Assert.That(d.MemoryStats.Allocated - before, Is.EqualTo(12_288));
        t.Dispose();
        t.Dispose();
        Assert.That(d.MemoryStats.Allocated, Is.EqualTo(before));
        Assert.That(d.PeakDeviceMemoryBytes, Is.GreaterThanOrEqualTo(d.MemoryStats.Reserved));
        d.ValidateAllocator();
    }
}
