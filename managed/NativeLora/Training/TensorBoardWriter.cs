using System.Numerics;
using Google.Protobuf;

namespace NativeLora.Training;

/// <summary>
/// TensorBoard event files (`logging: tensorboard`), written beside metrics.jsonl: the tfevents record format of
/// tensorflow's record_writer.cc — u64 LE length, u32 masked CRC32C of those 8 bytes, the data, u32 masked CRC32C of
/// the data — holding Event protobufs (event.proto): first {wall_time, file_version "brain.Event:2"}, then one
/// {wall_time, step, summary{value{tag, simple_value}}} per logged step. Messages are encoded field by field with
/// Google.Protobuf's CodedOutputStream (no generated code: four fields of two messages).
/// </summary>
public sealed class TensorBoardWriter : IDisposable
{
    private readonly FileStream _file;

    public string Path { get; }

    /// <summary>Creates events.out.tfevents.{unix seconds}.{host} in dir; a second run in the same second gets a suffix, never overwrites.</summary>
    public TensorBoardWriter(string dir)
    {
        Directory.CreateDirectory(dir);
        var name = $"events.out.tfevents.{DateTimeOffset.UtcNow.ToUnixTimeSeconds():D10}.{Environment.MachineName}";
        for (int i = 0; ; i++)
        {
            Path = System.IO.Path.Combine(dir, i == 0 ? name : $"{name}.{i}");
            try
            {
                _file = new FileStream(Path, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
                break;
            }
            catch (IOException) when (File.Exists(Path) && i < 1000)
            {
            }
        }
        WriteRecord(Event(WallTime(), step: null, w => w.WriteString("brain.Event:2"), fileVersionField: true));
    }

    /// <summary>The scalars of one step, under the tags HF's Trainer uses (train/loss, train/learning_rate, …, eval/loss).</summary>
    public void WriteStep(StepMetrics m)
    {
        var scalars = new List<(string, double)>
        {
            ("train/loss", m.Loss), ("train/learning_rate", m.Lr), ("train/grad_norm", m.GradNorm),
            ("train/tokens_per_second", m.TokensPerSecond), ("train/memory_bytes", m.MemoryBytes),
        };
        if (m.ValLoss is double v) scalars.Add(("eval/loss", v));
        WriteScalars(m.Step, scalars);
    }

    public void WriteScalars(long step, IReadOnlyList<(string Tag, double Value)> scalars)
    {
        var summary = new MemoryStream();
        var s = new CodedOutputStream(summary);
        foreach (var (tag, value) in scalars)
        {
            var item = new MemoryStream();
            var v = new CodedOutputStream(item);
            v.WriteTag(1, WireFormat.WireType.LengthDelimited); // Summary.Value.tag
            v.WriteString(tag);
            v.WriteTag(2, WireFormat.WireType.Fixed32); // Summary.Value.simple_value
            v.WriteFloat((float)value);
            v.Flush();
            s.WriteTag(1, WireFormat.WireType.LengthDelimited); // Summary.value (repeated)
            s.WriteBytes(ByteString.CopyFrom(item.ToArray()));
        }
        s.Flush();
        WriteRecord(Event(WallTime(), step, w => w.WriteBytes(ByteString.CopyFrom(summary.ToArray())), fileVersionField: false));
    }

    private static double WallTime() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;

    // Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string) | summary = 5 (Summary)
    private static byte[] Event(double wallTime, long? step, Action<CodedOutputStream> what, bool fileVersionField)
    {
        var buffer = new MemoryStream();
        var w = new CodedOutputStream(buffer);
        w.WriteTag(1, WireFormat.WireType.Fixed64);
        w.WriteDouble(wallTime);
        if (step is long st)
        {
            w.WriteTag(2, WireFormat.WireType.Varint);
            w.WriteInt64(st);
        }
        w.WriteTag(fileVersionField ? 3 : 5, WireFormat.WireType.LengthDelimited);
        what(w);
        w.Flush();
        return buffer.ToArray();
    }

    // one record, flushed: TensorBoard reads the file while the run writes it
    private void WriteRecord(byte[] data)
    {
        Span<byte> header = stackalloc byte[12];
        BitConverter.TryWriteBytes(header[..8], (ulong)data.Length);
        if (!BitConverter.IsLittleEndian) header[..8].Reverse();
        WriteUInt32(header[8..], MaskedCrc32C(header[..8]));
        _file.Write(header);
        _file.Write(data);
        Span<byte> footer = stackalloc byte[4];
        WriteUInt32(footer, MaskedCrc32C(data));
        _file.Write(footer);
        _file.Flush();
    }

    private static void WriteUInt32(Span<byte> dst, uint v) => System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(dst, v);

    /// <summary>CRC32C (Castagnoli) as TensorFlow's crc32c::Value: start at ~0, invert at the end.</summary>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = ~0u;
        foreach (var b in data) crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }

    /// <summary>TensorFlow's crc32c::Mask: rotate right by 15 and add a constant (so CRCs of CRCs stay well spread).</summary>
    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    public void Dispose() => _file.Dispose();
}
