/* Stand-ins for kernel facilities, so the test objects look like kernel objects. */
#define __init __attribute__((section(".init.text"), cold, __noinline__))
#define noinline __attribute__((noinline))
extern int printk(const char *fmt, ...);
extern void kfree(void *p);
extern int capable(int cap);
