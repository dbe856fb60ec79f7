using System.Buffers.Binary;
using System.Text;
using NativeLora.SafeTensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.SafeTensors;

/// <summary>
/// Seeded random mutations of valid files. Every open must either succeed with every tensor
/// readable inside the file, or throw SafeTensorsFormatException; anything else is a bug.
/// The seed comes from the clock unless NATIVELORA_FUZZ_SEED is set, and is printed.
/// </summary>
public class SafeTensorsFuzzTests : TempDirTests
{
    const int Iterations = 2000;

    static readonly string[] Snippets =
    [
        "{", "}", "[", "]", ",", ":", "\"", "\\\"", "\\u0000", "\\ud800", "\\udc00\\ud800", "\"x\":1,",
        "\"__metadata__\":{\"a\":\"b\"},", "\"__metadata__\":5,", "\"__metadata__\":{\"a\":1},",
        "\"dtype\":\"F16\",", "\"dtype\":\"F4\",", "\"shape\":[],", "\"shape\":[0],", "\"shape\":[-1],",
        "\"data_offsets\":[0,0],", "\"data_offsets\":[0],", "-1", "1e400", "0.5", "18446744073709551615",
        "18446744073709551616", "9223372036854775808", "4294967296", "null", "true", "[[[[", "]]]]",
        "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},", "\"\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},",
        "é", "\uFEFF", " ", "\n", "/*", "'",
    ];

    static int Seed()
    {
        string? env = Environment.GetEnvironmentVariable("NATIVELORA_FUZZ_SEED");
        return env is not null && int.TryParse(env, out int s) ? s : Environment.TickCount;
    }

    List<byte[]> BaseFiles()
    {
        var rng = new Random(7);
        byte[] R(int n) { var b = new byte[n]; rng.NextBytes(b); return b; }
        var writers = new[]
        {
            new SafeTensorsWriter()
                .SetMetadata("format", "pt")
                .Add("model.embed.weight", SafeTensorsDType.BF16, [4, 3], R(24))
                .Add("scale", SafeTensorsDType.F32, [], R(4))
                .Add("empty", SafeTensorsDType.F16, [0, 5], R(0))
                .Add("ids", SafeTensorsDType.I64, [3], R(24))
                .Add("half", SafeTensorsDType.F16, [2, 2], R(8))
                .Add("mask", SafeTensorsDType.BOOL, [5], R(5))
                .Add("f64", SafeTensorsDType.F64, [2], R(16)),
            new SafeTensorsWriter(),
            new SafeTensorsWriter().Add("w", SafeTensorsDType.F32, [2, 2], R(16)),
            new SafeTensorsWriter().SetMetadata("a", "b").SetMetadata("ü", "ß").Add("q", SafeTensorsDType.U8, [7], R(7)).Add("r", SafeTensorsDType.I32, [1, 1], R(4)),
        };
        var result = new List<byte[]>();
        for (int i = 0; i < writers.Length; i++)
        {
            string p = Path.Combine(Dir, $"base{i}.safetensors");
            writers[i].Write(p);
            result.Add(File.ReadAllBytes(p));
        }
        return result;
    }

    static int HeaderEnd(byte[] b) =>
        b.Length < 8 ? b.Length : (int)Math.Min((ulong)b.Length, 8 + Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(b), (ulong)b.Length));

    static (byte[] Bytes, string What) Mutate(Random rng, byte[] src)
    {
        var b = (byte[])src.Clone();
        switch (rng.Next(9))
        {
            case 0:
            {
                int k = rng.Next(1, 9);
                var where = new List<int>();
                for (int i = 0; i < k && b.Length > 0; i++) { int p = rng.Next(b.Length); where.Add(p); b[p] ^= (byte)rng.Next(1, 256); }
                return (b, $"flip bytes at [{string.Join(",", where)}]");
            }
            case 1:
            {
                int end = HeaderEnd(b);
                if (end <= 8) goto case 0;
                int p = rng.Next(8, end);
                b[p] ^= (byte)rng.Next(1, 256);
                return (b, $"flip header byte {p}");
            }
            case 2:
            {
                int len = rng.Next(b.Length);
                return (b[..len], $"truncate to {len}");
            }
            case 3:
            {
                var extra = new byte[rng.Next(1, 65)];
                rng.NextBytes(extra);
                return ([.. b, .. extra], $"extend by {extra.Length}");
            }
            case 4:
            {
                ulong n = BinaryPrimitives.ReadUInt64LittleEndian(b);
                ulong[] choices = [0, n + 1, n - 1, n + 8, n - 8, (ulong)b.Length - 8, (ulong)b.Length, 100_000_000, 100_000_001,
                                   ulong.MaxValue, 1ul << 63, (ulong)rng.NextInt64(), (ulong)rng.Next(0, 512)];
                ulong v = choices[rng.Next(choices.Length)];
                BinaryPrimitives.WriteUInt64LittleEndian(b, v);
                return (b, $"length prefix {n} -> {v}");
            }
            case 5:
            {
                int end = HeaderEnd(b);
                if (end <= 8) goto case 0;
                string snippet = Snippets[rng.Next(Snippets.Length)];
                byte[] s = rng.Next(10) == 0 ? [0xFF] : Encoding.UTF8.GetBytes(snippet);
                int at = rng.Next(8, end + 1);
                int remove = rng.Next(3) == 0 ? Math.Min(rng.Next(0, 8), end - at) : 0;
                byte[] r = [.. b[..at], .. s, .. b[(at + remove)..]];
                bool fix = rng.Next(2) == 0;
                if (fix) BinaryPrimitives.WriteUInt64LittleEndian(r, BinaryPrimitives.ReadUInt64LittleEndian(r) + (ulong)s.Length - (ulong)remove);
                return (r, $"splice '{snippet}' at {at} replacing {remove} bytes{(fix ? ", prefix adjusted" : "")}");
            }
            case 6:
            {
                int end = HeaderEnd(b);
                var digits = Enumerable.Range(8, Math.Max(0, end - 8)).Where(i => b[i] is >= (byte)'0' and <= (byte)'9').ToList();
                if (digits.Count == 0) goto case 0;
                int p = digits[rng.Next(digits.Count)];
                byte d = (byte)('0' + rng.Next(10));
                b[p] = d;
                return (b, $"digit at {p} -> {(char)d}");
            }
            case 7:
            {
                // Data-only damage keeps the file valid: exercises the read-back path.
                int end = HeaderEnd(b);
                if (end >= b.Length) goto case 0;
                int p = rng.Next(end, b.Length);
                b[p] ^= (byte)rng.Next(1, 256);
                return (b, $"flip data byte {p}");
            }
            default:
            {
                var (once, w1) = Mutate(rng, b);
                if (once.Length < 8) return (once, w1);
                var (twice, w2) = Mutate(rng, once);
                return (twice, w1 + " then " + w2);
            }
        }
    }

    static void ExerciseAll(SafeTensorsFile f, long fileLength)
    {
        Assert.That(8 + f.HeaderLength + f.DataLength, Is.EqualTo(fileLength));
        long covered = 0;
        foreach (var t in f.Tensors)
        {
            Assert.That(t.DataBegin, Is.InRange(0, f.DataLength));
            Assert.That(t.DataEnd, Is.InRange(t.DataBegin, f.DataLength));
            Assert.That(t.ByteLength, Is.EqualTo(t.ElementCount * t.DType.ElementSize()));
            var bytes = f.GetBytes(t.Name);
            Assert.That(bytes.Length, Is.EqualTo(t.ByteLength));
            int sum = 0;
            foreach (var x in bytes) sum += x; // touch every byte of the mapping
            if (t.DType is SafeTensorsDType.F64 or SafeTensorsDType.F32 or SafeTensorsDType.F16 or SafeTensorsDType.BF16)
                Assert.That(f.ReadAsFloat32(t.Name), Has.Length.EqualTo(t.ElementCount));
            covered += t.ByteLength;
        }
        Assert.That(covered, Is.EqualTo(f.DataLength), "tensors tile the data buffer");
        foreach (var kv in f.Metadata) Assert.That(kv.Value, Is.Not.Null);
    }

    [Test]
    public void MutatedFilesOpenOrFailWithFormatException()
    {
        int seed = Seed();
        TestContext.Out.WriteLine($"safetensors fuzz seed: {seed} (replay with NATIVELORA_FUZZ_SEED={seed})");
        var rng = new Random(seed);
        var bases = BaseFiles();
        foreach (var b in bases)
        {
            string p = Path.Combine(Dir, "check.safetensors");
            File.WriteAllBytes(p, b);
            using var f = SafeTensorsFile.Open(p); // the unmutated inputs must be valid
        }

        string path = Path.Combine(Dir, "fuzz.safetensors");
        int opened = 0, rejected = 0;
        for (int i = 0; i < Iterations; i++)
        {
            var (bytes, what) = Mutate(rng, bases[rng.Next(bases.Count)]);
            File.WriteAllBytes(path, bytes);
            try
            {
                using var f = SafeTensorsFile.Open(path);
                ExerciseAll(f, bytes.Length);
                opened++;
            }
            catch (SafeTensorsFormatException e)
            {
                if (!e.Message.StartsWith(path, StringComparison.Ordinal))
                    Assert.Fail($"seed {seed}, iteration {i}, mutation {what}: message lacks the path: {e.Message}");
                rejected++;
            }
            catch (Exception e)
            {
                Assert.Fail($"seed {seed}, iteration {i}, mutation {what}: unexpected {e.GetType().Name}: {e}");
            }
        }
        TestContext.Out.WriteLine($"{opened} mutated files opened, {rejected} rejected");
        Assert.That(opened + rejected, Is.EqualTo(Iterations));
        Assert.That(rejected, Is.GreaterThan(Iterations / 10), "mutations should mostly break files");
        Assert.That(opened, Is.GreaterThan(0), "some mutations (data bytes) leave files valid");
    }
}
