;; The counter actor written by hand against the raw ABI (docs/actors.md):
;; each message increments the state key `count` (decimal text) and replies
;; with the new value. Same behaviour as examples/actors/counter.
(module
  ;; The only imports it uses, all from module "roost".
  ;; state_get(kptr, klen, vptr, vcap) -> the value's length, or -1 if unset
  (import "roost" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  ;; state_set(kptr, klen, vptr, vlen) -> 0, or -3 (E_LIMIT)
  (import "roost" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  ;; reply(ptr, len) -> 0, or -3 (E_LIMIT)
  (import "roost" "reply" (func $reply (param i32 i32) (result i32)))

  ;; The module defines and exports its memory: one 64 KiB page.
  ;;   [0, 5)    the state key "count"
  ;;   [32, 64)  the old value as read, then the new one written backwards
  (memory (export "memory") 1)
  (data (i32.const 0) "count")

  ;; The decimal digits at [ptr, ptr+len) as a number.
  (func $parse (param $ptr i32) (param $len i32) (result i64)
    (local $n i64)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $digit
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        ;; n = n * 10 + (byte - '0')
        (local.set $n
          (i64.add
            (i64.mul (local.get $n) (i64.const 10))
            (i64.extend_i32_u (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $digit)))
    (local.get $n))

  ;; Writes n in decimal so that it ends just before $end; returns where it starts.
  (func $format (param $n i64) (param $end i32) (result i32)
    (loop $digit
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      ;; byte = '0' + n % 10
      (i64.store8 (local.get $end) (i64.add (i64.const 48) (i64.rem_u (local.get $n) (i64.const 10))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $n) (i64.const 0))))
    (local.get $end))

  ;; handle(len) -> 0 commits the message's transaction; anything else aborts it.
  (func (export "handle") (param $len i32) (result i32)
    (local $vlen i32)
    (local $count i64)
    (local $start i32)
    (local $code i32)
    ;; count = state["count"] (0 when unset)
    (local.set $vlen (call $state_get (i32.const 0) (i32.const 5) (i32.const 32) (i32.const 32)))
    (if (i32.gt_u (local.get $vlen) (i32.const 32))
      ;; -1 (unset) is a large unsigned number too: only a value over the buffer is an error
      (then (if (i32.ne (local.get $vlen) (i32.const -1)) (then (return (i32.const 1))))))
    (if (i32.gt_s (local.get $vlen) (i32.const 0))
      (then (local.set $count (call $parse (i32.const 32) (local.get $vlen)))))
    ;; count += 1, as text in [start, 64)
    (local.set $count (i64.add (local.get $count) (i64.const 1)))
    (local.set $start (call $format (local.get $count) (i32.const 64)))
    ;; state["count"] = text; reply(text)
    (local.set $code
      (call $state_set (i32.const 0) (i32.const 5) (local.get $start) (i32.sub (i32.const 64) (local.get $start))))
    (if (local.get $code) (then (return (local.get $code))))
    (call $reply (local.get $start) (i32.sub (i32.const 64) (local.get $start)))))
