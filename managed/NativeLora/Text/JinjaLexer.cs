using System.Globalization;
using System.Text;

namespace NativeLora.Text;

internal enum TokenKind { Text, BlockBegin, BlockEnd, VariableBegin, VariableEnd, Name, String, Integer, Float, Operator, Eof }

/// <summary>A token; <see cref="Value"/> is the text, the unescaped string, or the operator.</summary>
internal readonly record struct Token(TokenKind Kind, string Value, int Line, int Column)
{
    public bool IsName(string name) => Kind == TokenKind.Name && Value == name;
    public bool IsOp(string op) => Kind == TokenKind.Operator && Value == op;

    public string Describe() => Kind switch
    {
        TokenKind.Eof => "end of template",
        TokenKind.BlockEnd => "end of statement block",
        TokenKind.VariableEnd => "end of print statement",
        TokenKind.BlockBegin => "begin of statement block",
        TokenKind.VariableBegin => "begin of print statement",
        TokenKind.Text => "template text",
        TokenKind.String => "string literal",
        _ => $"'{Value}'",
    };
}

/// <summary>
/// Splits a template into text and tag tokens the way Python Jinja's lexer does with the options
/// transformers' apply_chat_template uses: trim_blocks (drop the first newline after a block or
/// comment tag), lstrip_blocks (drop spaces before a block or comment tag that starts a line),
/// keep_trailing_newline=False, and "-" / "+" whitespace control on every tag.
/// </summary>
internal sealed class JinjaLexer
{
    private readonly string _src;
    private readonly List<int> _lineStarts = [0];
    private readonly List<Token> _tokens = [];
    private int _pos;

    private JinjaLexer(string source)
    {
        // Python Jinja turns \r\n and \r into \n and drops one trailing newline before lexing.
        _src = source.Replace("\r\n", "\n").Replace('\r', '\n');
        if (_src.EndsWith('\n')) _src = _src[..^1];
        for (int i = 0; i < _src.Length; i++)
            if (_src[i] == '\n') _lineStarts.Add(i + 1);
    }

    public static List<Token> Tokenize(string source)
    {
        var lexer = new JinjaLexer(source);
        lexer.Run();
        return lexer._tokens;
    }

    private (int Line, int Column) Position(int offset)
    {
        int line = _lineStarts.BinarySearch(offset);
        if (line < 0) line = ~line - 1;
        return (line + 1, offset - _lineStarts[line] + 1);
    }

    private ChatTemplateException Error(int offset, string message)
    {
        var (line, column) = Position(offset);
        return new ChatTemplateException($"line {line}, column {column}: {message}", line, column);
    }

    private void Add(TokenKind kind, string value, int offset)
    {
        var (line, column) = Position(offset);
        _tokens.Add(new Token(kind, value, line, column));
    }

    private void Run()
    {
        while (_pos < _src.Length)
        {
            int tag = FindTagStart(_pos);
            if (tag < 0)
            {
                Add(TokenKind.Text, _src[_pos..], _pos);
                _pos = _src.Length;
                break;
            }
            char kind = _src[tag + 1]; // '{', '%' or '#'
            char control = tag + 2 < _src.Length ? _src[tag + 2] : '\0';
            AddText(_pos, tag, control, isVariable: kind == '{');
            int inner = tag + 2 + (control is '-' or '+' ? 1 : 0);
            if (kind == '#') LexComment(tag, inner);
            else if (kind == '%' && TryLexRaw(tag, inner)) { }
            else LexTag(tag, inner, kind == '%');
        }
        Add(TokenKind.Eof, "", _src.Length);
    }

    private int FindTagStart(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
            if (_src[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>Emits the text before a tag, after the tag's whitespace control has trimmed it.</summary>
    private void AddText(int start, int end, char control, bool isVariable)
    {
        string text = _src[start..end];
        if (control == '-')
            text = PyText.Strip(text, left: false); // "{%-": drop all whitespace before the tag
        else if (control != '+' && !isVariable)
        {
            // lstrip_blocks: spaces between the start of a line and a block/comment tag go away.
            int lineStart = text.LastIndexOf('\n') + 1;
            bool atLineStart = lineStart > 0 || start == 0 || _src[start - 1] == '\n';
            if (atLineStart && lineStart < text.Length && AllSpace(text, lineStart))
                text = text[..lineStart];
        }
        if (text.Length > 0) Add(TokenKind.Text, text, start);
    }

    private static bool AllSpace(string s, int from)
    {
        for (int i = from; i < s.Length; i++)
            if (!PyText.IsSpace(s[i])) return false;
        return true;
    }

    /// <summary>After a closing "-%}" skip all whitespace; after a plain "%}" or "#}" skip one newline.</summary>
    private void AfterTagEnd(char control, bool trimNewline)
    {
        if (control == '-')
            while (_pos < _src.Length && PyText.IsSpace(_src[_pos])) _pos++;
        else if (control != '+' && trimNewline && _pos < _src.Length && _src[_pos] == '\n')
            _pos++;
    }

    private void LexComment(int tag, int inner)
    {
        int end = _src.IndexOf("#}", inner, StringComparison.Ordinal);
        if (end < 0) throw Error(tag, "missing end of comment tag '#}'");
        char control = end > inner && _src[end - 1] is '-' or '+' ? _src[end - 1] : '\0';
        _pos = end + 2;
        AfterTagEnd(control, trimNewline: true);
    }

    /// <summary>{% raw %}…{% endraw %}: everything between is text, tags included.</summary>
    private bool TryLexRaw(int tag, int inner)
    {
        int p = SkipSpace(inner);
        if (!_src.AsSpan(p).StartsWith("raw") || (p + 3 < _src.Length && IsNameChar(_src[p + 3]))) return false;
        p = SkipSpace(p + 3);
        char openEnd = '\0';
        if (_src.AsSpan(p).StartsWith("-%}")) { openEnd = '-'; p += 3; }
        else if (_src.AsSpan(p).StartsWith("%}")) p += 2;
        else throw Error(p, "expected '%}' after 'raw'");
        _pos = p;
        AfterTagEnd(openEnd, trimNewline: false); // Python applies no trim_blocks after {% raw %}
        for (int search = _pos; ; )
        {
            int close = _src.IndexOf("{%", search, StringComparison.Ordinal);
            search = close + 2;
            if (close < 0) throw Error(tag, "missing '{% endraw %}' for this raw block");
            char control = close + 2 < _src.Length && _src[close + 2] is '-' or '+' ? _src[close + 2] : '\0';
            int q = SkipSpace(close + 2 + (control == '\0' ? 0 : 1));
            if (!_src.AsSpan(q).StartsWith("endraw")) continue;
            q = SkipSpace(q + 6);
            char endControl = '\0';
            if (_src.AsSpan(q).StartsWith("-%}") || _src.AsSpan(q).StartsWith("+%}")) { endControl = _src[q]; q += 3; }
            else if (_src.AsSpan(q).StartsWith("%}")) q += 2;
            else continue;
            AddText(_pos, close, control, isVariable: false);
            _pos = q;
            AfterTagEnd(endControl, trimNewline: true);
            return true;
        }
    }

    private int SkipSpace(int p)
    {
        while (p < _src.Length && PyText.IsSpace(_src[p])) p++;
        return p;
    }

    private static bool IsNameChar(char c) => char.IsLetterOrDigit(c) || c == '_';

    private static readonly string[] Operators =
        ["**", "//", "==", "!=", "<=", ">=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"];

    private void LexTag(int tag, int inner, bool isBlock)
    {
        Add(isBlock ? TokenKind.BlockBegin : TokenKind.VariableBegin, isBlock ? "{%" : "{{", tag);
        string close = isBlock ? "%}" : "}}";
        var brackets = new Stack<(char Close, int Offset)>();
        _pos = inner;
        while (true)
        {
            _pos = SkipSpace(_pos);
            if (_pos >= _src.Length)
                throw Error(tag, $"unexpected end of template, expected '{close}' to close this tag");
            // The closing delimiter only counts outside brackets: "{{ {'a': {}} }}" is one expression.
            if (brackets.Count == 0)
            {
                var rest = _src.AsSpan(_pos);
                char control = '\0';
                if ((rest.StartsWith("-") || (isBlock && rest.StartsWith("+"))) && rest[1..].StartsWith(close)) control = rest[0];
                if (control != '\0' || rest.StartsWith(close))
                {
                    Add(isBlock ? TokenKind.BlockEnd : TokenKind.VariableEnd, close, _pos);
                    _pos += close.Length + (control == '\0' ? 0 : 1);
                    AfterTagEnd(control, trimNewline: isBlock);
                    return;
                }
            }
            char c = _src[_pos];
            if (c == '\'' || c == '"') { LexString(); continue; }
            if (char.IsAsciiDigit(c)) { LexNumber(); continue; }
            if (char.IsLetter(c) || c == '_')
            {
                int start = _pos;
                while (_pos < _src.Length && IsNameChar(_src[_pos])) _pos++;
                Add(TokenKind.Name, _src[start.._pos], start);
                continue;
            }
            string? op = null;
            foreach (var candidate in Operators)
                if (_src.AsSpan(_pos).StartsWith(candidate)) { op = candidate; break; }
            if (op == null) throw Error(_pos, $"unexpected character '{c}'");
            if (op is "(" or "[" or "{") brackets.Push((op switch { "(" => ')', "[" => ']', _ => '}' }, _pos));
            else if (op is ")" or "]" or "}")
            {
                if (brackets.Count == 0) throw Error(_pos, $"unexpected '{op}'");
                var (expected, _) = brackets.Pop();
                if (expected != op[0]) throw Error(_pos, $"unexpected '{op}', expected '{expected}'");
            }
            Add(TokenKind.Operator, op, _pos);
            _pos += op.Length;
        }
    }

    private void LexNumber()
    {
        int start = _pos;
        bool afterDot = start > 0 && _src[start - 1] == '.'; // "x.0.1" is two subscripts, not a float
        if (!afterDot && _src[_pos] == '0' && _pos + 1 < _src.Length && (_src[_pos + 1] | 0x20) is 'x' or 'o' or 'b')
        {
            int radix = (_src[_pos + 1] | 0x20) switch { 'x' => 16, 'o' => 8, _ => 2 };
            _pos += 2;
            int digitsStart = _pos;
            while (_pos < _src.Length && (char.IsAsciiHexDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
            string digits = _src[digitsStart.._pos].Replace("_", "");
            try
            {
                Add(TokenKind.Integer, Convert.ToInt64(digits, radix).ToString(CultureInfo.InvariantCulture), start);
            }
            catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
            {
                throw Error(start, $"invalid integer literal '{_src[start.._pos]}'");
            }
            return;
        }
        ScanDigits();
        bool isFloat = false;
        if (!afterDot && _pos + 1 < _src.Length && _src[_pos] == '.' && char.IsAsciiDigit(_src[_pos + 1]))
        {
            _pos++;
            ScanDigits();
            isFloat = true;
        }
        if (!afterDot && _pos < _src.Length && (_src[_pos] | 0x20) == 'e')
        {
            int e = _pos + 1;
            if (e < _src.Length && _src[e] is '+' or '-') e++;
            if (e < _src.Length && char.IsAsciiDigit(_src[e]))
            {
                _pos = e;
                ScanDigits();
                isFloat = true;
            }
        }
        Add(isFloat ? TokenKind.Float : TokenKind.Integer, _src[start.._pos].Replace("_", ""), start);
    }

    private void ScanDigits()
    {
        while (_pos < _src.Length && (char.IsAsciiDigit(_src[_pos]) || (_src[_pos] == '_' && _pos + 1 < _src.Length && char.IsAsciiDigit(_src[_pos + 1]))))
            _pos++;
    }

    /// <summary>A quoted string with Python's escapes; an unknown escape keeps its backslash, as in Python.</summary>
    private void LexString()
    {
        int start = _pos;
        char quote = _src[_pos++];
        var sb = new StringBuilder();
        while (true)
        {
            if (_pos >= _src.Length) throw Error(start, "unterminated string literal");
            char c = _src[_pos++];
            if (c == quote) break;
            if (c != '\\') { sb.Append(c); continue; }
            if (_pos >= _src.Length) throw Error(start, "unterminated string literal");
            char e = _src[_pos++];
            switch (e)
            {
                case '\n': break; // backslash-newline continues the line
                case '\\': case '\'': case '"': sb.Append(e); break;
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case 'a': sb.Append('\a'); break;
                case 'x': sb.Append(HexEscape(2, start)); break;
                case 'u': sb.Append(HexEscape(4, start)); break;
                case 'U': sb.Append(HexEscape(8, start)); break;
                case >= '0' and <= '7':
                {
                    int value = e - '0';
                    for (int k = 0; k < 2 && _pos < _src.Length && _src[_pos] is >= '0' and <= '7'; k++)
                        value = value * 8 + (_src[_pos++] - '0');
                    sb.Append((char)value);
                    break;
                }
                default: sb.Append('\\').Append(e); break;
            }
        }
        Add(TokenKind.String, sb.ToString(), start);
    }

    private string HexEscape(int length, int stringStart)
    {
        if (_pos + length > _src.Length
            || !int.TryParse(_src.AsSpan(_pos, length), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int value)
            || !Rune.IsValid(value) && !(value >= 0xD800 && value <= 0xDFFF))
            throw Error(stringStart, $"invalid \\{(length == 2 ? "x" : length == 4 ? "u" : "U")} escape in string literal");
        _pos += length;
        return value <= 0xFFFF ? ((char)value).ToString() : char.ConvertFromUtf32(value);
    }
}
